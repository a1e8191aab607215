//! A DTLS provider for str0m that builds dimpl's configuration once per
//! process instead of once per peer connection.
//!
//! str0m's aws-lc-rs provider runs `dimpl::Config::builder().build()` in every
//! `new_dtls`, i.e. for every `Rtc` (two per participant), and `build`
//! validates the crypto provider with a P-384 key exchange and an ECDSA
//! signature check: about a quarter of the CPU a join cost, on the shard
//! thread. The configuration depends only on the MTU str0m passes, so one
//! `Arc<dimpl::Config>` serves every session; the rest is str0m's provider.
//! A session armed by [`tap_next_session`] also hands keys to Relais: its
//! SRTP sending keys to its direct egress, its SRTCP sending keys to the
//! feedback and reports it sends a publisher, the publisher's SRTP keys
//! to the direct ingress, and the publisher's SRTCP keys to what cuts its
//! sender reports down ([`SrtcpKeys::without_descriptions`]).

use std::cell::RefCell;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use str0m::crypto::dtls::{
    DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
};
use str0m::crypto::{CryptoError, CryptoProvider};

use crate::egress::{KeySlot, SrtpSender};
use crate::ingress::{OpenSlot, SrtpReceiver};
use crate::srtcp::{SrtcpKeys, SrtcpSender};

/// Where a session's SRTCP sending keys land once its DTLS handshake is done.
pub(crate) type SrtcpSlot = Arc<OnceLock<SrtcpSender>>;
/// Where the peer's SRTCP keys land (to read what it reports).
pub(crate) type ReportKeySlot = Arc<OnceLock<SrtcpKeys>>;

/// Where the next DTLS instance built on a thread reports its sending keys.
#[derive(Default)]
pub(crate) struct KeyTaps {
    /// SRTP and SRTCP, AES-GCM only (the direct egress).
    pub srtp: Option<KeySlot>,
    /// SRTCP alone, any profile (the congestion feedback to a publisher).
    pub srtcp: Option<SrtcpSlot>,
    /// The peer's SRTP keys, AES-GCM only (the direct ingress).
    pub srtp_in: Option<OpenSlot>,
    /// The peer's SRTCP keys, any profile (a publisher's sender reports, a
    /// subscriber's reports).
    pub srtcp_in: Option<ReportKeySlot>,
}

thread_local! {
    static NEXT_SESSION: RefCell<KeyTaps> = RefCell::default();
}

/// Have the next DTLS instance built on this thread report into `taps`.
pub(crate) fn tap_next_session(taps: KeyTaps) {
    NEXT_SESSION.with(|next| *next.borrow_mut() = taps);
}

/// The taps armed by [`tap_next_session`] (taken: one session each).
pub(crate) fn take_taps() -> KeyTaps {
    NEXT_SESSION.with(|next| std::mem::take(&mut *next.borrow_mut()))
}

/// str0m's default crypto provider with DTLS sessions built from a shared
/// dimpl configuration.
pub(crate) fn crypto_provider() -> CryptoProvider {
    let base = str0m::crypto::from_feature_flags();
    let dtls = DTLS.get_or_init(|| SharedConfigDtls {
        base: base.dtls_provider,
        config: OnceLock::new(),
    });
    CryptoProvider {
        dtls_provider: dtls,
        ..base
    }
}

static DTLS: OnceLock<SharedConfigDtls> = OnceLock::new();

struct SharedConfigDtls {
    /// Generates certificates (and builds sessions for an unexpected MTU).
    base: &'static dyn DtlsProvider,
    /// Built for the first MTU asked for; str0m asks with the same one every
    /// time unless `RtcConfig::set_mtu` differs between sessions.
    config: OnceLock<(usize, Arc<dimpl::Config>)>,
}

impl fmt::Debug for SharedConfigDtls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedConfigDtls").finish_non_exhaustive()
    }
}

impl SharedConfigDtls {
    fn config(&self, mtu: Option<usize>) -> Result<Option<Arc<dimpl::Config>>, CryptoError> {
        let Some(mtu) = mtu else {
            return Ok(None);
        };
        if let Some((cached, config)) = self.config.get() {
            return Ok((*cached == mtu).then(|| config.clone()));
        }
        // Like str0m's provider: ICE already proved return routability, so no
        // server cookie.
        let config = dimpl::Config::builder()
            .use_server_cookie(false)
            .mtu(mtu)
            .build()
            .map_err(|e| CryptoError::Other(format!("dimpl config creation failed: {e}")))?;
        let (_, config) = self.config.get_or_init(|| (mtu, Arc::new(config)));
        Ok(Some(config.clone()))
    }
}

impl DtlsProvider for SharedConfigDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        self.base.generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        // Taken whatever the path: a slot armed for this session must not
        // reach the next one.
        let keys = take_taps();
        let Some(config) = self.config(mtu)? else {
            return self.base.new_dtls(cert, now, dtls_version, mtu);
        };
        let cert = cert.clone();
        let dtls = match dtls_version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, cert, now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, cert, now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, cert, now),
            _ => return self.base.new_dtls(&cert, now, dtls_version, mtu),
        };
        Ok(Box::new(Session { dtls, keys }))
    }
}

/// One peer connection's DTLS state machine, as str0m drives it.
struct Session {
    dtls: dimpl::Dtls,
    /// Where to put the sending keys Relais uses.
    keys: KeyTaps,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").finish_non_exhaustive()
    }
}

impl DtlsInstance for Session {
    fn set_active(&mut self, active: bool) {
        self.dtls.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.dtls.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        let output = self.dtls.poll_output(buf);
        if let DtlsOutput::KeyingMaterial(material, profile) = &output {
            let client = self.dtls.is_active();
            if let Some(slot) = &self.keys.srtp {
                if let Some(sender) =
                    SrtpSender::from_keying_material(material.as_ref(), *profile, client)
                {
                    let _ = slot.set(sender);
                }
            }
            if let Some(slot) = &self.keys.srtp_in {
                if let Some(receiver) =
                    SrtpReceiver::from_keying_material(material.as_ref(), *profile, !client)
                {
                    let _ = slot.set(receiver);
                }
            }
            if let Some(slot) = &self.keys.srtcp {
                if let Some(sender) =
                    SrtcpSender::from_keying_material(material.as_ref(), *profile, client)
                {
                    let _ = slot.set(sender);
                }
            }
            if let Some(slot) = &self.keys.srtcp_in {
                if let Some(keys) =
                    SrtcpKeys::from_keying_material(material.as_ref(), *profile, !client)
                {
                    let _ = slot.set(keys);
                }
            }
        }
        output
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.dtls.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.dtls.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.dtls.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.dtls.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.dtls.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.dtls.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.dtls.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_share_one_configuration() {
        let dtls = crypto_provider().dtls_provider;
        let cert = dtls.generate_certificate().expect("certificate");
        let now = Instant::now();
        let sessions: Vec<_> = (0..3)
            .map(|_| dtls.new_dtls(&cert, now, DtlsVersion::Dtls12, Some(1150)))
            .collect::<Result<_, _>>()
            .expect("sessions");
        let (mtu, config) = DTLS.get().and_then(|d| d.config.get()).expect("built");
        assert_eq!(*mtu, 1150);
        // Every session holds the one configuration (dimpl keeps two references).
        assert!(Arc::strong_count(config) > sessions.len());
        drop(sessions);
        assert_eq!(Arc::strong_count(config), 1, "only the cache holds it");
    }
}
