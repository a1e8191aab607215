//! ICE over TCP (RFC 6544), passive side only: clients connect to
//! `rtc.tcp_port` and speak RFC 4571 framing (a 2-byte big-endian length, then
//! one packet). A connection belongs to one shard, named by the ufrag of its
//! first frame, a STUN binding request (the rule of the UDP port); its frames
//! then reach that shard like datagrams, and the shard's TCP packets come back
//! through the connection's bounded write queue ([`TcpLink`]), which the shard
//! never waits on.
//!
//! Everything a peer controls is bounded: frame size, time to the first frame,
//! idle time, time to write, connections per IP and in total, the write queue.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use metrics::{counter, gauge};
use str0m::net::Protocol;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tracing::{debug, info, warn};

use crate::metrics::{
    DROP_SHARD_QUEUE_FULL, ICE_TCP_CLOSED, ICE_TCP_CONNECTIONS, ICE_TCP_OPEN, PACKETS_DROPPED,
};
use crate::shards::{Datagram, Shards, RECEIVE_BUFFER};

/// A connection's write queue as its shard holds it: packets, unframed.
pub(crate) type TcpLink = mpsc::Sender<Vec<u8>>;

/// Largest frame taken: what fits a receive buffer, like a UDP datagram (no
/// WebRTC packet is larger). A larger one means the peer is not WebRTC.
const MAX_FRAME: usize = RECEIVE_BUFFER;
/// A connection must send its STUN binding request within this time.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(3);
/// A live ICE peer sends consent checks every few seconds (RFC 7675).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A peer that does not take what we send within this time is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Packets waiting for a connection's socket; beyond, the shard drops them.
const WRITE_QUEUE: usize = 256;
const MAX_CONNECTIONS: usize = 4096;
/// Each participant opens a connection or two per peer connection; a whole
/// office behind one NAT fits.
const MAX_CONNECTIONS_PER_IP: usize = 256;
const READ_BUFFER: usize = 8 * 1024;
const WRITE_BUFFER: usize = 16 * 1024;
/// After a failed accept (e.g. out of file descriptors), before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Why a connection ended; `reason()` labels [`ICE_TCP_CLOSED`].
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("closed by the peer")]
    Eof,
    #[error("i/o error: {0}")]
    Io(io::Error),
    #[error("no first frame within {FIRST_FRAME_TIMEOUT:?}")]
    Silent,
    #[error("first frame is not a STUN request for one of our sessions")]
    NotStun,
    #[error("nothing received for {IDLE_TIMEOUT:?}")]
    Idle,
    #[error("could not write for {WRITE_TIMEOUT:?}")]
    WriteStalled,
    #[error("frame of {0} bytes (at most {MAX_FRAME})")]
    FrameTooLarge(usize),
    #[error("the shard let go of the connection")]
    Released,
}

impl Closed {
    fn reason(&self) -> &'static str {
        match self {
            Closed::Eof => "eof",
            Closed::Io(_) => "io_error",
            Closed::Silent | Closed::NotStun => "no_stun",
            Closed::Idle => "idle",
            Closed::WriteStalled => "write_stalled",
            Closed::FrameTooLarge(_) => "frame_too_large",
            Closed::Released => "released",
        }
    }
}

impl From<io::Error> for Closed {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Closed::Eof
        } else {
            Closed::Io(e)
        }
    }
}

/// Accept ICE-TCP connections on `listener` until the runtime stops. `local`
/// is the advertised candidate address: str0m matches requests against it.
pub(crate) fn spawn(listener: TcpListener, shards: Shards, local: SocketAddr) {
    info!(%local, "ice-tcp listening");
    tokio::spawn(accept_loop(listener, shards, local));
}

async fn accept_loop(listener: TcpListener, shards: Shards, local: SocketAddr) {
    let limits = Arc::new(Limits::default());
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "ice-tcp accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let slot = match limits.admit(remote.ip()) {
            Ok(slot) => slot,
            Err(reason) => {
                debug!(%remote, reason, "ice-tcp connection refused");
                counter!(ICE_TCP_CLOSED, "reason" => reason).increment(1);
                continue;
            }
        };
        counter!(ICE_TCP_CONNECTIONS).increment(1);
        let shards = shards.clone();
        tokio::spawn(async move {
            let closed = serve(stream, remote, local, &shards).await;
            drop(slot);
            debug!(%remote, reason = %closed, "ice-tcp connection closed");
            counter!(ICE_TCP_CLOSED, "reason" => closed.reason()).increment(1);
        });
    }
}

/// One connection, from its first frame to its end.
async fn serve(
    stream: TcpStream,
    remote: SocketAddr,
    local: SocketAddr,
    shards: &Shards,
) -> Closed {
    // Media: a small packet must not wait for the next one (Nagle).
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut read = BufReader::with_capacity(READ_BUFFER, read);
    let mut data = shards.buffer();
    match timeout(FIRST_FRAME_TIMEOUT, read_frame(&mut read, &mut data)).await {
        Ok(Ok(())) => {}
        Ok(Err(closed)) => return closed,
        Err(_) => return Closed::Silent,
    }
    let Some(shard) = shards.shard_of_stun(&data) else {
        return Closed::NotStun;
    };
    debug!(%remote, shard, "ice-tcp connection");
    let (link, queue) = mpsc::channel(WRITE_QUEUE);
    let frames = Frames {
        shards,
        shard,
        remote,
        local,
    };
    tokio::select! {
        closed = frames.read(read, data, link) => closed,
        closed = write_frames(write, queue) => closed,
    }
}

/// Where a connection's frames go.
struct Frames<'a> {
    shards: &'a Shards,
    shard: usize,
    remote: SocketAddr,
    local: SocketAddr,
}

impl Frames<'_> {
    /// Hand `data` (the first frame) and every frame after it to the shard;
    /// `link` travels with the first frame the shard accepts.
    async fn read(
        &self,
        mut read: impl AsyncRead + Unpin,
        mut data: Vec<u8>,
        link: TcpLink,
    ) -> Closed {
        let mut opened = Some(link);
        loop {
            let datagram = Datagram {
                proto: Protocol::Tcp,
                source: self.remote,
                destination: self.local,
                data,
                received: Instant::now(),
                opened: opened.take(),
            };
            data = match self.shards.offer_frame(self.shard, datagram) {
                Ok(()) => self.shards.buffer(),
                Err(mut dropped) => {
                    counter!(PACKETS_DROPPED, "reason" => DROP_SHARD_QUEUE_FULL).increment(1);
                    opened = dropped.opened.take();
                    dropped.data
                }
            };
            match timeout(IDLE_TIMEOUT, read_frame(&mut read, &mut data)).await {
                Ok(Ok(())) => {}
                Ok(Err(closed)) => return closed,
                Err(_) => return Closed::Idle,
            }
        }
    }
}

/// Read the next non-empty RFC 4571 frame into `data`.
async fn read_frame(read: &mut (impl AsyncRead + Unpin), data: &mut Vec<u8>) -> Result<(), Closed> {
    let len = loop {
        match usize::from(read.read_u16().await?) {
            0 => continue,
            len if len > MAX_FRAME => return Err(Closed::FrameTooLarge(len)),
            len => break len,
        }
    };
    data.clear();
    data.resize(len, 0);
    read.read_exact(data).await?;
    Ok(())
}

/// Send what the shard queues, framed, flushing when the queue runs dry.
async fn write_frames(
    write: impl AsyncWrite + Unpin,
    mut queue: mpsc::Receiver<Vec<u8>>,
) -> Closed {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, write);
    while let Some(packet) = queue.recv().await {
        match timeout(WRITE_TIMEOUT, write_batch(&mut out, packet, &mut queue)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return e.into(),
            Err(_) => return Closed::WriteStalled,
        }
    }
    Closed::Released
}

async fn write_batch(
    out: &mut (impl AsyncWrite + Unpin),
    first: Vec<u8>,
    queue: &mut mpsc::Receiver<Vec<u8>>,
) -> io::Result<()> {
    let mut next = Some(first);
    while let Some(packet) = next {
        // str0m's packets stay far below 64 KiB; one that does not is dropped.
        if let Ok(len) = u16::try_from(packet.len()) {
            out.write_all(&len.to_be_bytes()).await?;
            out.write_all(&packet).await?;
        }
        next = queue.try_recv().ok();
    }
    out.flush().await
}

/// Open connections, in total and per remote IP. Locked once per connection,
/// never per packet.
#[derive(Default)]
struct Limits {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl Limits {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, per_ip) = &mut *open;
        if *total >= MAX_CONNECTIONS {
            return Err("limit_total");
        }
        let of_ip = per_ip.entry(ip).or_default();
        if *of_ip >= MAX_CONNECTIONS_PER_IP {
            return Err("limit_per_ip");
        }
        *of_ip += 1;
        *total += 1;
        gauge!(ICE_TCP_OPEN).increment(1.0);
        Ok(Slot {
            limits: self.clone(),
            ip,
        })
    }
}

/// One admitted connection; gives its place back when dropped.
struct Slot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (total, per_ip) = &mut *open;
        *total -= 1;
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        gauge!(ICE_TCP_OPEN).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_read_and_bounded() {
        let mut input: &[u8] = &[0, 0, 0, 3, 1, 2, 3, 0x08, 0x01];
        let mut data = Vec::new();
        read_frame(&mut input, &mut data).await.unwrap();
        assert_eq!(data, [1, 2, 3]);
        assert!(matches!(
            read_frame(&mut input, &mut data).await,
            Err(Closed::FrameTooLarge(0x0801))
        ));
        let mut half: &[u8] = &[0, 5, 1, 2];
        assert!(matches!(
            read_frame(&mut half, &mut data).await,
            Err(Closed::Eof)
        ));
    }

    #[tokio::test]
    async fn queued_packets_are_framed_in_order() {
        let (link, queue) = mpsc::channel(4);
        link.try_send(vec![7; 3]).unwrap();
        link.try_send(vec![9]).unwrap();
        drop(link);
        let mut out = Vec::new();
        assert!(matches!(
            write_frames(&mut out, queue).await,
            Closed::Released
        ));
        assert_eq!(out, [0, 3, 7, 7, 7, 0, 1, 9]);
    }

    #[test]
    fn connections_are_limited_per_ip() {
        let limits = Arc::new(Limits::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let slots: Vec<Slot> = (0..MAX_CONNECTIONS_PER_IP)
            .map(|_| limits.admit(ip).unwrap())
            .collect();
        assert_eq!(limits.admit(ip).err(), Some("limit_per_ip"));
        assert!(limits.admit("192.0.2.2".parse().unwrap()).is_ok());
        drop(slots);
        assert!(limits.admit(ip).is_ok());
        assert_eq!(limits.open.lock().unwrap().0, 0);
    }
}
