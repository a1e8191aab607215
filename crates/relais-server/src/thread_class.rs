//! Which of the node's threads the kernel runs first when they share a core.
//!
//! A media thread (a shard, the shared receive thread, a fan-out helper) that
//! waits for a core leaves its datagrams waiting in the socket, and near a
//! busy core the wait compounds: every microsecond taken from a shard at 80 %
//! becomes several microseconds of backlog. The control plane (the async
//! runtime: signaling, room API, webhooks, the cluster) wakes a few hundred
//! times a second, and by default each wake-up preempts the shard it lands
//! on. Its threads therefore run under `SCHED_BATCH`: the same share of the
//! CPU as before (same weight, no privilege needed), but a wake-up no longer
//! preempts a running thread; it runs when the shard sleeps or its slice
//! ends, a few milliseconds at most, which a signal message does not notice.
//! Once it runs, it may keep the core for its time slice while a shard waits
//! with packets queued; so it also asks for a short slice (0.2 ms instead of
//! the default 0.7–3 ms: kernels from 6.12 honour it, older ones ignore it).
//! Media threads set the normal policy explicitly, since a thread inherits
//! its creator's and shards are started from the runtime.

/// Mark the calling thread as control plane: it yields to media threads.
pub fn control_plane() {
    set_policy(Policy::Batch);
}

/// Mark the calling thread as media: it preempts control-plane threads.
pub fn media() {
    set_policy(Policy::Normal);
}

/// How long the calling thread has waited, since it started, ready to run
/// while its CPU ran something else (the kernel's run delay, from
/// `/proc/thread-self/schedstat`): what other threads and processes took from
/// it. `None` where the kernel does not keep it.
pub fn run_delay() -> Option<std::time::Duration> {
    // "<time on a CPU> <time waiting for one> <times on a CPU>", nanoseconds.
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let waited = stat.split_whitespace().nth(1)?.parse().ok()?;
    Some(std::time::Duration::from_nanos(waited))
}

#[derive(Debug, Clone, Copy)]
enum Policy {
    Normal,
    Batch,
}

/// The time slice a control-plane thread asks for.
#[cfg(target_os = "linux")]
const CONTROL_PLANE_SLICE_NS: u64 = 200_000;

/// `struct sched_attr` of sched_setattr(2), its first version (48 bytes).
#[cfg(target_os = "linux")]
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    /// For the fair policies (Linux 6.12 and later): the slice wanted.
    runtime_ns: u64,
    deadline_ns: u64,
    period_ns: u64,
}

#[cfg(target_os = "linux")]
fn set_policy(policy: Policy) {
    let (policy, slice) = match policy {
        Policy::Normal => (libc::SCHED_OTHER, 0),
        Policy::Batch => (libc::SCHED_BATCH, CONTROL_PLANE_SLICE_NS),
    };
    // sched_setattr also sets the nice value: keep the one the node was
    // started with (`nice relais …`). Linux: PRIO_PROCESS 0 is the calling thread.
    // SAFETY: no pointers; -1 is a valid answer as well as the error value,
    // and an error leaves the default of 0 either way.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let set = |slice: u64| {
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            policy: policy as u32,
            flags: 0,
            nice,
            priority: 0,
            runtime_ns: slice,
            deadline_ns: 0,
            period_ns: 0,
        };
        // SAFETY: `attr` is a valid, sized sched_attr for the duration of the
        // call; pid 0 is the calling thread; no flags.
        unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) }
    };
    // A kernel that refuses the slice still gets the policy.
    let result = if set(slice) == 0 { 0 } else { set(0) };
    if result != 0 {
        // Not fatal: the node works as before, only with less favoured media.
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            policy,
            "could not set the thread's scheduling policy"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn set_policy(_policy: Policy) {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn current_nice() -> i32 {
        // SAFETY: no pointers; the calling thread's nice value.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[test]
    fn the_nice_value_the_node_was_started_with_is_kept() {
        let (control, media) = std::thread::spawn(|| {
            // Raising one's own nice value needs no privilege.
            // SAFETY: no pointers; the calling thread.
            assert_eq!(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 5) }, 0);
            control_plane();
            let control = current_nice();
            media();
            (control, current_nice())
        })
        .join()
        .unwrap();
        assert_eq!((control, media), (5, 5));
    }

    /// Pin the calling thread to `cpu`.
    fn pin_to(cpu: usize) {
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it;
        // sched_setaffinity reads it for the calling thread (pid 0).
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
    }

    fn spin(for_: std::time::Duration) {
        let start = std::time::Instant::now();
        while start.elapsed() < for_ {
            std::hint::spin_loop();
        }
    }

    #[test]
    fn a_thread_that_shares_its_cpu_with_a_busy_one_waits_for_it() {
        // SAFETY: no pointers; the CPU the calling thread runs on.
        let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).unwrap();
        let waited = std::thread::spawn(move || {
            pin_to(cpu);
            let before = run_delay().expect("the kernel keeps a run delay");
            // Another thread busy on the same CPU for as long as this one.
            let rival = std::thread::spawn(move || {
                pin_to(cpu);
                spin(std::time::Duration::from_millis(300));
            });
            spin(std::time::Duration::from_millis(300));
            rival.join().unwrap();
            run_delay().unwrap() - before
        })
        .join()
        .unwrap();
        // Two busy threads on one CPU: each waits about half the time.
        assert!(
            waited >= std::time::Duration::from_millis(50),
            "waited {waited:?}"
        );
    }

    fn current_policy() -> i32 {
        // SAFETY: no arguments to get wrong; pid 0 is the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn a_media_thread_started_by_the_control_plane_is_media_again() {
        let (control, media_child) = std::thread::spawn(|| {
            control_plane();
            let control = current_policy();
            let media_child = std::thread::spawn(|| {
                let inherited = current_policy();
                media();
                (inherited, current_policy())
            })
            .join()
            .unwrap();
            (control, media_child)
        })
        .join()
        .unwrap();
        assert_eq!(control, libc::SCHED_BATCH);
        assert_eq!(
            media_child,
            (libc::SCHED_BATCH, libc::SCHED_OTHER),
            "a child inherits the batch policy and media() undoes it"
        );
    }
}
