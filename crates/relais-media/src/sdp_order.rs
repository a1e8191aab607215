//! Answer a publisher with the codec it asked for.
//!
//! An offerer sends with the first codec of the answer, and str0m lists an
//! answer's codecs in the order of its own configuration (VP8 first). A client
//! that chose another codec says so in `AddTrackRequest.simulcast_codecs` —
//! livekit-client publishing VP9 still offers VP8 first and relies on the
//! server's answer to put VP9 first. So the payload types of each answered
//! `m=` line are reordered: the codec its track asked for first, then the
//! offer's order (an answer reuses the offer's payload type numbers). Nothing
//! else in the answer changes.

use crate::HashMap;

/// One media section of an SDP.
#[derive(Default)]
struct Section {
    mid: String,
    /// Payload types of the `m=` line, in order.
    formats: Vec<String>,
    /// The track id of `a=msid:<stream> <track>` (a publisher's `cid`).
    track: Option<String>,
    /// Codec name (lowercase) by payload type, from `a=rtpmap`.
    codecs: HashMap<String, String>,
}

fn sections(sdp: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            // m=<media> <port> <proto> <fmt> ...
            let formats = m.split_whitespace().skip(3).map(str::to_owned).collect();
            out.push(Section {
                formats,
                ..Default::default()
            });
            continue;
        }
        let Some(section) = out.last_mut() else {
            continue;
        };
        if let Some(mid) = line.strip_prefix("a=mid:") {
            section.mid = mid.trim().to_owned();
        } else if let Some(msid) = line.strip_prefix("a=msid:") {
            section.track = msid.split_whitespace().nth(1).map(str::to_owned);
        } else if let Some(map) = line.strip_prefix("a=rtpmap:") {
            let mut parts = map.split_whitespace();
            if let (Some(pt), Some(codec)) = (parts.next(), parts.next()) {
                let name = codec.split('/').next().unwrap_or_default();
                section
                    .codecs
                    .insert(pt.to_owned(), name.to_ascii_lowercase());
            }
        }
    }
    out
}

/// `answer` with each `m=` line's payload types ordered: first the codec
/// `wanted(track id)` names for that section's track (a name like `"vp9"`),
/// then as the offer listed them.
pub(crate) fn order_answer(
    offer: &str,
    answer: &str,
    wanted: impl Fn(&str) -> Option<String>,
) -> String {
    let offered: HashMap<String, Section> = sections(offer)
        .into_iter()
        .map(|s| (s.mid.clone(), s))
        .collect();
    let answered = sections(answer);
    let mut index = 0;
    let mut out = String::with_capacity(answer.len());
    for line in answer.split_inclusive('\n') {
        let Some(m) = line.strip_prefix("m=") else {
            out.push_str(line);
            continue;
        };
        let section = answered.get(index);
        index += 1;
        let offer = section.and_then(|s| offered.get(&s.mid));
        let preferred = offer
            .and_then(|o| o.track.as_deref())
            .and_then(&wanted)
            .map(|c| c.to_ascii_lowercase());
        let body = m.trim_end_matches(['\r', '\n']);
        let ending = &m[body.len()..];
        let mut fields: Vec<&str> = body.split_whitespace().collect();
        if let (Some(offer), Some(section), true) = (offer, section, fields.len() > 3) {
            let rank = |pt: &&str| {
                let not_wanted =
                    preferred.as_deref() != section.codecs.get(*pt).map(String::as_str);
                let position = offer.formats.iter().position(|o| o == pt);
                (not_wanted, position.unwrap_or(usize::MAX))
            };
            fields[3..].sort_by_key(rank); // stable: unknown formats keep their order, last
        }
        out.push_str("m=");
        out.push_str(&fields.join(" "));
        out.push_str(ending);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=mid:0\r\na=msid:s mic\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99 45 46\r\na=mid:1\r\na=msid:s cam\r\n";

    const ANSWER: &str = "v=0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=rtpmap:111 opus/48000/2\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 45 96 97 98 99 46\r\na=mid:1\r\n\
        a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=rtpmap:98 VP9/90000\r\n\
        a=rtpmap:99 rtx/90000\r\na=rtpmap:45 AV1/90000\r\na=rtpmap:46 rtx/90000\r\n";

    fn m_lines(sdp: &str) -> Vec<&str> {
        sdp.lines().filter(|l| l.starts_with("m=")).collect()
    }

    #[test]
    fn the_asked_codec_comes_first_then_the_offer_order() {
        let fixed = order_answer(OFFER, ANSWER, |track| {
            (track == "cam").then(|| "VP9".to_string())
        });
        assert_eq!(
            m_lines(&fixed),
            [
                "m=audio 9 UDP/TLS/RTP/SAVPF 111",
                "m=video 9 UDP/TLS/RTP/SAVPF 98 96 97 99 45 46",
            ]
        );
        // Every other line is untouched.
        let others = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| !l.starts_with("m="))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(others(&fixed), others(ANSWER));
        assert!(fixed.ends_with("\r\n"));
    }

    #[test]
    fn without_a_wish_the_offer_order_is_kept() {
        let fixed = order_answer(OFFER, ANSWER, |_| None);
        assert_eq!(
            m_lines(&fixed)[1],
            "m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99 45 46"
        );
        // Sections the offer does not have are left alone.
        let other = "m=video 9 RTP/SAVPF 2 1\na=mid:7\n";
        assert_eq!(order_answer(OFFER, other, |_| None), other);
        assert_eq!(order_answer("", "m=video 9 X\n", |_| None), "m=video 9 X\n");
    }
}
