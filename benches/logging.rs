//! What logging costs a media packet: each datagram a shard handles enters
//! its participant's span (a child of its room's) and leaves it, as
//! `Room::handle_receive` does — on one shard thread, and on two at once as on
//! a node with a shard per core; with the span held by a clone of the
//! `tracing::Span` or of an `Arc` around it. The spans are error-level, as the
//! media core's are (they give warnings their context), so every filter keeps
//! them. A filter of targets and levels is static; one with a span filter is
//! an `EnvFilter`, which looks the span up under a process-wide lock on every
//! enter and exit.
//!
//!   cargo bench -p relais-bench --bench logging

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use relais_server::cli::log_dispatch;
use relais_server::config::LoggingConfig;
use tracing::{error_span, Dispatch, Span};

/// How a shard holds a span while it enters it: a clone of the
/// `tracing::Span` (before), or of an `Arc` around it (`SharedSpan`, now).
#[derive(Clone, Copy)]
enum Handle {
    SpanClone,
    Shared,
}

/// `threads` threads each enter and leave a participant's span `iters`
/// times under `dispatch`, through a handle of their own as
/// `Room::handle_receive` takes one; the time of the slowest.
fn enter_and_leave(dispatch: &Dispatch, handle: Handle, threads: usize, iters: u64) -> Duration {
    let start = Barrier::new(threads);
    thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                let start = &start;
                scope.spawn(move || {
                    tracing::dispatcher::with_default(dispatch, || {
                        let room = error_span!(parent: None, "room", room = %format!("room-{i}"));
                        let participant = Arc::new(error_span!(
                            parent: &room,
                            "participant",
                            participant = "p"
                        ));
                        start.wait();
                        let began = Instant::now();
                        for _ in 0..iters {
                            match handle {
                                Handle::SpanClone => {
                                    let span = Span::clone(&participant);
                                    let _entered = span.enter();
                                    black_box(&span);
                                }
                                Handle::Shared => {
                                    let span = Arc::clone(&participant);
                                    let _entered = span.enter();
                                    black_box(&span);
                                }
                            }
                        }
                        began.elapsed()
                    })
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("bench thread"))
            .max()
            .unwrap_or_default()
    })
}

fn bench_logging(c: &mut Criterion) {
    let mut group = c.benchmark_group("span_per_packet");
    for (filter, level) in [
        ("targets", "warn"),
        ("span_filter", "warn,[room{room=other}]=debug"),
    ] {
        let logging = LoggingConfig {
            level: level.to_string(),
            ..LoggingConfig::default()
        };
        let dispatch = log_dispatch(&logging, None);
        for (name, handle) in [
            ("span_clone", Handle::SpanClone),
            ("shared", Handle::Shared),
        ] {
            for threads in [1, 2] {
                let id = BenchmarkId::new(format!("{filter}/{name}"), threads);
                group.bench_with_input(id, &threads, |b, &threads| {
                    b.iter_custom(|iters| enter_and_leave(&dispatch, handle, threads, iters))
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench_logging);
criterion_main!(benches);
