//! The join path of relais-media: what one new peer connection costs with
//! str0m's own crypto provider (a dimpl configuration built and self-checked
//! per `Rtc`) and with the node's (one shared configuration), and a whole
//! `Shard::join` (two peer connections, join response, the room told) and the
//! leave after it, in a room of 100.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use relais_media::{JoinParams, MediaConfig, ParticipantKey, Shard};
use relais_proto::livekit::{DisconnectReason, ParticipantPermission};
use str0m::config::CryptoProvider;
use str0m::Rtc;

fn params(key: u64) -> JoinParams {
    JoinParams {
        key: ParticipantKey(key),
        identity: format!("p{key}"),
        name: String::new(),
        metadata: String::new(),
        attributes: BTreeMap::new(),
        permission: ParticipantPermission {
            can_subscribe: true,
            ..Default::default()
        },
        kind: 0,
        auto_subscribe: true,
        protocol: 16,
        client_info: None,
    }
}

fn join(c: &mut Criterion) {
    let candidate = relais_media::udp_host_candidate("10.0.0.1:7882".parse().unwrap()).unwrap();
    let config = MediaConfig::new(vec![candidate], "ND_bench".into()).expect("config");
    let mut g = c.benchmark_group("join");
    let providers: [(&str, Arc<CryptoProvider>); 2] = [
        (
            "str0m_provider",
            Arc::new(str0m::crypto::from_feature_flags()),
        ),
        ("node_provider", config.crypto.clone()),
    ];
    for (name, crypto) in providers {
        g.bench_function(format!("rtc_new/{name}"), |b| {
            b.iter(|| {
                let rtc = Rtc::builder()
                    .set_ice_lite(true)
                    .set_rtp_mode(true)
                    .set_crypto_provider(crypto.clone())
                    .set_dtls_cert(config.dtls_cert.clone())
                    .build(Instant::now());
                black_box(rtc)
            })
        });
    }

    let mut shard = Shard::new(0, config);
    let now = Instant::now();
    for key in 1..=100 {
        shard
            .join(now, 0, "bench", true, params(key))
            .expect("join");
    }
    while shard.poll_output().is_some() {}
    let mut key = 1000;
    g.bench_function("shard_join_and_leave/room_of_100", |b| {
        b.iter(|| {
            key += 1;
            let k = shard
                .join(now, 0, "bench", true, params(key))
                .expect("join");
            while shard.poll_output().is_some() {}
            shard.remove_participant(now, k, DisconnectReason::ClientInitiated);
            while shard.poll_output().is_some() {}
        })
    });
    g.finish();
}

criterion_group!(benches, join);
criterion_main!(benches);
