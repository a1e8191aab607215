//! What Relais reads in a STUN message itself: the local ICE username
//! fragment it is addressed to, so the first packet from a new address can be
//! routed to its session without asking every session; and whether the client
//! nominates the pair it came on, which the direct egress sends on.

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_USE_CANDIDATE: u16 = 0x0025;
const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];

/// True when `buf` looks like a STUN message (RFC 5389 header with the magic cookie).
pub fn is_stun(buf: &[u8]) -> bool {
    buf.len() >= 20 && buf[0] < 2 && buf[4..8] == MAGIC_COOKIE
}

/// The local ufrag of a STUN binding request: the part of USERNAME before ':'.
pub fn local_ufrag(buf: &[u8]) -> Option<&str> {
    let username = attribute(buf, ATTR_USERNAME)?;
    std::str::from_utf8(username).ok()?.split(':').next()
}

/// True for a binding request with USE-CANDIDATE (RFC 8445 §7.1.2): the
/// controlling client nominates the pair it arrives on — it keeps checking
/// other pairs, but media goes on this one.
pub fn nominates(buf: &[u8]) -> bool {
    buf.len() >= 2 && buf[..2] == BINDING_REQUEST && attribute(buf, ATTR_USE_CANDIDATE).is_some()
}

/// The value of the first attribute of type `wanted`.
fn attribute(buf: &[u8], wanted: u16) -> Option<&[u8]> {
    if !is_stun(buf) {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let body = buf.get(20..20 + len)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[at], body[at + 1]]);
        let size = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + size)?;
        if kind == wanted {
            return Some(value);
        }
        at += 4 + size.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        binding_request_with(username, &[])
    }

    fn binding_request_with(username: &str, more: &[u8]) -> Vec<u8> {
        let mut attrs = Vec::new();
        // An attribute before USERNAME, with padding, to exercise the walk.
        attrs.extend_from_slice(&[0x80, 0x2a, 0x00, 0x03, 1, 2, 3, 0]);
        attrs.extend_from_slice(more);
        attrs.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        msg.extend_from_slice(&MAGIC_COOKIE);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&attrs);
        msg
    }

    #[test]
    fn finds_the_local_ufrag() {
        let msg = binding_request("s01abc:remote");
        assert!(is_stun(&msg));
        assert_eq!(local_ufrag(&msg), Some("s01abc"));
    }

    #[test]
    fn a_nomination_is_a_request_with_use_candidate() {
        let use_candidate = [0x00, 0x25, 0x00, 0x00];
        assert!(nominates(&binding_request_with("a:b", &use_candidate)));
        assert!(!nominates(&binding_request("a:b")));
        // The success response to it is no nomination.
        let mut response = binding_request_with("a:b", &use_candidate);
        response[..2].copy_from_slice(&[0x01, 0x01]);
        assert!(!nominates(&response));
        assert!(!nominates(&[0x00, 0x01, 0x00]));
    }

    #[test]
    fn rejects_non_stun_and_truncated_input() {
        assert_eq!(local_ufrag(&[0x80, 0x60, 0, 0]), None);
        let mut msg = binding_request("abc:def");
        msg.truncate(30);
        assert_eq!(local_ufrag(&msg), None);
    }
}
