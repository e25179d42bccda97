//! UDP transport for Totem frames: multicast to a group (`transport: udp`) or unicast to
//! every configured member (`transport: udpu`), plus unicast to one node for the token.
//!
//! Node ids are learned from the frames each node builds itself (joins, tokens, commit
//! tokens, merge detects): an mcast frame may be a retransmission by another node, so its
//! sender field says nothing of where it came from. For `udpu` members whose node id is
//! their IPv4 address (corosync's default), the address is known before hearing from them.
//!
//! The kernel's cost is per packet, not per byte: on a bridge of veths the sender's
//! `sendmmsg` carried the bridge, netfilter and the receivers' UDP input once per
//! datagram and destination. So where the kernel offers it, a run of equal frames to one
//! destination goes out as one segmented packet (UDP GSO: the frames travel the whole
//! path as one and are split at the receiving socket, or not at all where that socket
//! asked for GRO, as ours does), and receiving takes many datagrams per system call
//! (recvmmsg, each buffer possibly holding a GRO run of frames). Where the kernel or the
//! device refuses segmentation, frames go out one datagram each, batched by `sendmmsg`.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::Bytes;
use log::{debug, info, trace};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use rustix::net::addr::SocketAddrArg;
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
use socket2::{Domain, Protocol, Socket, Type};

use crate::crypto::FrameCrypto;
use totem::wire::{Frame, FrameKind, MAGIC};
use totem::{Dest, NodeId};

/// Buffers per `recvmmsg`.
const RECV_BATCH: usize = 16;
/// One receive buffer: the largest datagram, or a GRO run of up to 64 frames of an
/// Ethernet-sized `netmtu`.
const RECV_BUF_LEN: usize = 96 << 10;
/// Bytes of one segmented send: what one UDP datagram may carry over IPv4, the kernel's
/// limit for the whole run.
const GSO_MAX_BYTES: usize = 65_507;

/// How frames reach the other nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One datagram to the group reaches everyone.
    Multicast { group: IpAddr, ttl: u8 },
    /// One datagram per member (ourselves excluded).
    Unicast { members: Vec<IpAddr> },
}

#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub nodeid: NodeId,
    pub bind: IpAddr,
    pub port: u16,
    pub mode: Mode,
    /// Socket buffer size asked of the kernel for each direction.
    pub buffer_bytes: usize,
}

#[derive(Clone, Debug, Default)]
pub struct TransportStats {
    pub datagrams_sent: u64,
    /// `sendmmsg` calls that carried them.
    pub send_batches: u64,
    pub send_errors: u64,
    pub datagrams_received: u64,
    /// Segmented sends (UDP GSO), each carrying several of `datagrams_sent`.
    pub segmented_sends: u64,
    /// Receive system calls (`recvmmsg`) that returned datagrams.
    pub recv_batches: u64,
    /// Unicast frames for a node whose address we do not know yet.
    pub unknown_destination: u64,
    /// Datagrams that failed authentication (secauth on): dropped.
    pub bad_auth: u64,
    /// `udpu` frames from an address outside the member list (not learned from).
    pub stranger_frames: u64,
}

pub struct Transport {
    socket: mio::net::UdpSocket,
    cfg: TransportConfig,
    my_addr: SocketAddr,
    peers: BTreeMap<NodeId, SocketAddr>,
    /// Where a multicast goes: the group, or every member but us.
    targets: Vec<SocketAddr>,
    /// Offload state of the socket (GSO segments allowed, GRO on), kept by quinn-udp.
    udp: UdpSocketState,
    /// Buffers for one `recvmmsg`, each large enough for a GRO run of frames.
    recv_bufs: Vec<Vec<u8>>,
    recv_meta: Vec<RecvMeta>,
    /// Frames received by the last `recvmmsg` and not handed out yet.
    received: VecDeque<Bytes>,
    /// The last `recvmmsg` filled fewer buffers than it had: the socket was empty then,
    /// and a datagram arriving since makes a new (edge-triggered) readiness event. So
    /// the next `recv` reports "no more" without asking the kernel again.
    drained: bool,
    /// Datagrams queued by [`Transport::send`] for the next [`Transport::flush`], in
    /// order, with their destination.
    queued: Vec<(Bytes, SocketAddr)>,
    /// Where the frames of a segmented send are laid end to end.
    gso_buf: Vec<u8>,
    /// Largest frame that may be a segment: what the path to every target carries in
    /// one IP packet. Segments travel unfragmented, so a larger frame (a `netmtu` above
    /// the link's MTU, fragmented by IP) always goes as a datagram of its own; a bridge
    /// would drop a segmented packet with oversized segments without a word.
    max_segment: usize,
    stats: TransportStats,
    /// Seals and opens every frame when secauth is on.
    crypto: Option<FrameCrypto>,
}

impl Transport {
    pub fn bind(cfg: TransportConfig, crypto: Option<FrameCrypto>) -> io::Result<Transport> {
        let my_addr = SocketAddr::new(cfg.bind, cfg.port);
        let domain = Domain::for_address(my_addr);
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_nonblocking(true)?;
        // The receive buffer must hold a whole rotation's burst of frames. As root the
        // FORCE options pass net.core.{r,w}mem_max; otherwise the kernel caps the size
        // there (the caller reads back what it got: `recv_buffer_bytes`).
        if rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, cfg.buffer_bytes)
            .is_err()
        {
            let _ = socket.set_recv_buffer_size(cfg.buffer_bytes);
        }
        if rustix::net::sockopt::set_socket_send_buffer_size_force(&socket, cfg.buffer_bytes)
            .is_err()
        {
            let _ = socket.set_send_buffer_size(cfg.buffer_bytes);
        }
        let mut peers = BTreeMap::new();
        match &cfg.mode {
            Mode::Multicast { group, ttl } => {
                socket.set_reuse_address(true)?;
                match (group, cfg.bind) {
                    (IpAddr::V4(g), IpAddr::V4(local)) => {
                        socket.bind(
                            &SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), cfg.port).into(),
                        )?;
                        socket.join_multicast_v4(g, &local)?;
                        socket.set_multicast_if_v4(&local)?;
                        // The loop stays on: other nodes on this host (127.0.0.x) hear
                        // us through it. Our own frames come back by it too, and Totem
                        // has them already; a socket filter drops them in the kernel, so
                        // each frame we send costs no wake-up, system call or copy here.
                        socket.set_multicast_loop_v4(true)?;
                        // Not on loopback: there, other nodes' unicast frames (tokens)
                        // may leave with the loopback route's source address, ours.
                        if !local.is_loopback() {
                            if let Err(e) = socket.attach_filter(&drop_from(local)) {
                                info!(target: "totem", "no socket filter for our own multicast ({e}): they are read and dropped");
                            }
                        }
                        socket.set_multicast_ttl_v4(u32::from(*ttl))?;
                    }
                    (IpAddr::V6(g), IpAddr::V6(_)) => {
                        socket.set_only_v6(true)?;
                        socket.bind(&SocketAddr::new(*group, cfg.port).into())?;
                        socket.join_multicast_v6(g, 0)?;
                        socket.set_multicast_loop_v6(true)?;
                        socket.set_multicast_hops_v6(u32::from(*ttl))?;
                    }
                    _ => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "mcastaddr and bindnetaddr are of different address families",
                        ))
                    }
                }
            }
            Mode::Unicast { members } => {
                socket.bind(&my_addr.into())?;
                for m in members {
                    if let IpAddr::V4(v4) = m {
                        peers.insert(NodeId(u32::from(*v4)), SocketAddr::new(*m, cfg.port));
                    }
                }
            }
        }
        peers.insert(cfg.nodeid, my_addr);
        let targets = match &cfg.mode {
            Mode::Multicast { group, .. } => vec![SocketAddr::new(*group, cfg.port)],
            Mode::Unicast { members } => members
                .iter()
                .map(|m| SocketAddr::new(*m, cfg.port))
                .filter(|a| *a != my_addr)
                .collect(),
        };
        let udp = UdpSocketState::new(UdpSockRef::from(&socket))?;
        // quinn-udp forbids fragmentation (it probes the path MTU itself); Totem sizes
        // its frames by `netmtu`, which may exceed the link's MTU on purpose.
        if my_addr.is_ipv4() {
            let _ = rustix::net::sockopt::set_ip_mtu_discover(
                &socket,
                rustix::net::sockopt::Ipv4PathMtuDiscovery::DONT,
            );
        } else {
            let _ = rustix::net::sockopt::set_ipv6_mtu_discover(
                &socket,
                rustix::net::sockopt::Ipv6PathMtuDiscovery::DONT,
            );
        }
        let max_segment = path_payload_limit(cfg.bind, &targets);
        debug!(target: "totem", "UDP offload: up to {} segments of at most {max_segment} bytes per send, GRO {}",
            udp.max_gso_segments(), if udp.gro_segments() > 1 { "on" } else { "off" });
        let std_socket: std::net::UdpSocket = socket.into();
        Ok(Transport {
            socket: mio::net::UdpSocket::from_std(std_socket),
            cfg,
            my_addr,
            peers,
            targets,
            udp,
            recv_bufs: vec![vec![0; RECV_BUF_LEN]; RECV_BATCH],
            recv_meta: vec![RecvMeta::default(); RECV_BATCH],
            received: VecDeque::new(),
            drained: false,
            queued: Vec::new(),
            gso_buf: Vec::new(),
            max_segment,
            stats: TransportStats::default(),
            crypto,
        })
    }

    pub fn socket(&mut self) -> &mut mio::net::UdpSocket {
        &mut self.socket
    }

    pub fn stats(&self) -> &TransportStats {
        &self.stats
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.my_addr
    }

    /// Every node whose address is known, this one included (for operators).
    pub fn peers(&self) -> &BTreeMap<NodeId, SocketAddr> {
        &self.peers
    }

    /// The receive buffer the kernel granted, in its own accounting (which counts
    /// each datagram's bookkeeping as well as its bytes).
    pub fn recv_buffer_bytes(&self) -> usize {
        rustix::net::sockopt::socket_recv_buffer_size(&self.socket).unwrap_or(0)
    }

    /// Queues a frame for [`Transport::flush`] (frames keep their order); errors are
    /// counted and logged there, never fatal (UDP may drop anyway).
    pub fn send(&mut self, dest: Dest, data: &Bytes) {
        let data = match self.crypto.as_mut() {
            Some(c) => c.seal(data),
            None => data.clone(),
        };
        match dest {
            Dest::Unicast(node) => match self.peers.get(&node).copied() {
                Some(addr) => self.queued.push((data, addr)),
                None => {
                    self.stats.unknown_destination += 1;
                    debug!(target: "totem", "no address known for node {node}; frame dropped");
                }
            },
            Dest::Multicast => {
                for &to in &self.targets {
                    self.queued.push((data.clone(), to));
                }
            }
        }
    }

    /// Sends every queued frame: as segmented sends where the kernel allows them (see the
    /// module comment), else as few `sendmmsg` calls as it takes.
    pub fn flush(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let max_segments = self.udp.max_gso_segments();
        let runs = plan_runs(&self.queued, max_segments, self.max_segment, GSO_MAX_BYTES);
        if max_segments > 1 && runs.iter().any(|r| r.frames.len() > 1) {
            self.flush_segmented(&runs);
        } else {
            self.flush_mmsg();
        }
        self.queued.clear();
    }

    /// One `sendmsg` per run, segmented when it holds more than one frame.
    fn flush_segmented(&mut self, runs: &[Run]) {
        for run in runs {
            self.gso_buf.clear();
            for &i in &run.frames {
                self.gso_buf.extend_from_slice(&self.queued[i].0);
            }
            let first = self.queued[run.frames[0]].0.len();
            let transmit = Transmit {
                destination: run.dest,
                ecn: None,
                contents: &self.gso_buf,
                segment_size: (run.frames.len() > 1).then_some(first),
                src_ip: None,
            };
            match self.udp.try_send(UdpSockRef::from(&self.socket), &transmit) {
                Ok(()) => {
                    self.stats.datagrams_sent += run.frames.len() as u64;
                    self.stats.send_batches += 1;
                    if run.frames.len() > 1 {
                        self.stats.segmented_sends += 1;
                    }
                }
                Err(e) => {
                    // A full buffer or an unreachable member: UDP may lose frames anyway
                    // and Totem recovers them. A refused segmentation (EIO, EINVAL) has
                    // also switched segmentation off for good (quinn-udp).
                    self.stats.send_errors += run.frames.len() as u64;
                    trace!(target: "totem", "send to {}: {e}", run.dest);
                    if run.frames.len() > 1 && self.udp.max_gso_segments() <= 1 {
                        info!(target: "totem", "the kernel refused a segmented send of {} frames of {first} bytes ({e}): sending one datagram per frame from now on",
                            run.frames.len());
                    }
                }
            }
        }
    }

    /// Every queued frame as its own datagram, up to 256 per `sendmmsg`.
    fn flush_mmsg(&mut self) {
        /// Datagrams per call (the kernel takes at most UIO_MAXIOV = 1024).
        const BATCH: usize = 256;
        let mut rest = &self.queued[..];
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(BATCH)];
            let addrs: Vec<SocketAddrAny> = chunk.iter().map(|(_, to)| to.as_any()).collect();
            let iovs: Vec<[IoSlice<'_>; 1]> =
                chunk.iter().map(|(d, _)| [IoSlice::new(d)]).collect();
            let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = chunk
                .iter()
                .map(|_| SendAncillaryBuffer::default())
                .collect();
            let mut msgs: Vec<MMsgHdr<'_>> = addrs
                .iter()
                .zip(&iovs)
                .zip(controls.iter_mut())
                .map(|((to, iov), control)| MMsgHdr::new_with_addr(to, iov, control))
                .collect();
            match rustix::net::sendmmsg(&self.socket, &mut msgs, SendFlags::empty()) {
                Ok(n) if n > 0 => {
                    self.stats.send_batches += 1;
                    self.stats.datagrams_sent += n as u64;
                    rest = &rest[n..];
                }
                Ok(_) => {
                    // Nothing sent and no error: count the first as lost and go on.
                    self.stats.send_errors += 1;
                    rest = &rest[1..];
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    // The first datagram failed (a full buffer, an unreachable member):
                    // UDP may lose it anyway, Totem recovers; go on with the others.
                    self.stats.send_errors += 1;
                    trace!(target: "totem", "send to {}: {e}", rest[0].1);
                    rest = &rest[1..];
                }
            }
        }
    }

    /// One frame, or `None` when the socket has no more for now.
    pub fn recv(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if let Some(frame) = self.received.pop_front() {
                return Ok(Some(frame));
            }
            if std::mem::take(&mut self.drained) {
                return Ok(None);
            }
            let mut bufs: Vec<IoSliceMut<'_>> = self
                .recv_bufs
                .iter_mut()
                .map(|b| IoSliceMut::new(b))
                .collect();
            let n = match self.udp.recv(
                UdpSockRef::from(&self.socket),
                &mut bufs,
                &mut self.recv_meta,
            ) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP errors from an earlier send surface here on Linux; not ours to fail on.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            };
            drop(bufs);
            self.stats.recv_batches += 1;
            self.drained = n < RECV_BATCH;
            for k in 0..n {
                let meta = self.recv_meta[k];
                let len = meta.len.min(RECV_BUF_LEN);
                let from = match meta.addr {
                    // quinn-udp reports IPv4 sources of a dual-stack socket as mapped.
                    SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
                        Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
                        None => meta.addr,
                    },
                    v4 => v4,
                };
                // One copy for the whole buffer; each frame is a slice of it.
                let chunk = Bytes::copy_from_slice(&self.recv_bufs[k][..len]);
                let stride = if meta.stride == 0 { len } else { meta.stride };
                let mut at = 0;
                while at < len {
                    let end = (at + stride).min(len);
                    self.accept(chunk.slice(at..end), from);
                    at = end;
                }
            }
        }
    }

    /// Takes one received datagram: opens it (secauth), learns from it, queues it.
    fn accept(&mut self, datagram: Bytes, from: SocketAddr) {
        self.stats.datagrams_received += 1;
        let frame = match &self.crypto {
            Some(c) => match c.open(&datagram) {
                Some(f) => f,
                None => {
                    self.stats.bad_auth += 1;
                    debug!(target: "totem", "dropping a datagram from {from} that fails authentication");
                    return;
                }
            },
            None => datagram,
        };
        self.learn(&frame, from);
        self.received.push_back(frame);
    }

    /// Remembers where a node is, from a frame it built itself.
    ///
    /// Only a frame that decodes completely counts, so a stray or forged datagram cannot
    /// redirect a node's token to a wrong address; with `udpu` the source must also be a
    /// configured member, which bounds the table by the member list.
    fn learn(&mut self, data: &Bytes, from: SocketAddr) {
        if data.len() < 4 || u16::from_be_bytes([data[0], data[1]]) != MAGIC {
            return;
        }
        let builds_itself = [
            FrameKind::Token as u8,
            FrameKind::Join as u8,
            FrameKind::Commit as u8,
            FrameKind::MergeDetect as u8,
            FrameKind::TokenHoldCancel as u8,
        ];
        if !builds_itself.contains(&data[3]) {
            return;
        }
        if let Mode::Unicast { members } = &self.cfg.mode {
            if !members.contains(&from.ip()) {
                self.stats.stranger_frames += 1;
                debug!(target: "totem", "ignoring the address of {from}: not a configured member");
                return;
            }
        }
        let Ok(frame) = Frame::decode(data) else {
            // Srp counts and drops it; it teaches us nothing.
            return;
        };
        let node = frame.sender();
        if node != self.cfg.nodeid && self.peers.get(&node) != Some(&from) {
            debug!(target: "totem", "node {node} is at {from}");
            self.peers.insert(node, from);
        }
    }
}

/// The largest UDP payload that reaches every target in one IP packet: the route's MTU
/// (asked of the kernel through a socket connected to each target) less the IP and UDP
/// headers. Where the kernel cannot say, an Ethernet MTU is assumed.
fn path_payload_limit(bind: IpAddr, targets: &[SocketAddr]) -> usize {
    let headers = if bind.is_ipv4() { 28 } else { 48 };
    let route_mtu = |to: &SocketAddr| -> io::Result<u32> {
        let probe = std::net::UdpSocket::bind(SocketAddr::new(bind, 0))?;
        probe.connect(to)?;
        if to.is_ipv4() {
            Ok(rustix::net::sockopt::ip_mtu(&probe)?)
        } else {
            Ok(rustix::net::sockopt::ipv6_mtu(&probe)?)
        }
    };
    let mtu = targets
        .iter()
        .map(|to| {
            route_mtu(to).unwrap_or_else(|e| {
                debug!(target: "totem", "no route MTU for {to} ({e}); assuming 1500");
                1500
            })
        })
        .min()
        .unwrap_or(1500);
    (mtu as usize).saturating_sub(headers).min(GSO_MAX_BYTES)
}

/// Frames of the flush queue that go to one destination in one send.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    dest: SocketAddr,
    /// Indices into the queue, in queue order.
    frames: Vec<usize>,
}

/// Cuts the flush queue into runs that one segmented send each can carry: frames to one
/// destination, in their order, all of the first one's length but the last, which may be
/// shorter; at most `max_segments` frames and `max_bytes` bytes; a frame longer than
/// `max_segment` always alone.
///
/// Destinations go in the order of their last frame in the queue, so the frame queued last
/// (the token, for the next node) is sent last: the next node gets its share of the visit's
/// frames before the token that makes it look for them, and so does every other member
/// before the token can reach it through the next one.
fn plan_runs(
    queued: &[(Bytes, SocketAddr)],
    max_segments: usize,
    max_segment: usize,
    max_bytes: usize,
) -> Vec<Run> {
    let mut dests: Vec<(SocketAddr, usize)> = Vec::new();
    for (i, (_, to)) in queued.iter().enumerate() {
        match dests.iter_mut().find(|(d, _)| d == to) {
            Some(entry) => entry.1 = i,
            None => dests.push((*to, i)),
        }
    }
    dests.sort_by_key(|&(_, last)| last);
    let max_segments = max_segments.max(1);
    let mut runs = Vec::new();
    for (dest, _) in dests {
        let mut run: Option<(Run, usize, usize, bool)> = None; // run, segment, bytes, closed
        for (i, (data, to)) in queued.iter().enumerate() {
            if *to != dest {
                continue;
            }
            let len = data.len();
            if let Some((r, segment, bytes, closed)) = run.as_mut() {
                if !*closed
                    && *segment <= max_segment
                    && len <= *segment
                    && r.frames.len() < max_segments
                    && *bytes + len <= max_bytes
                {
                    r.frames.push(i);
                    *bytes += len;
                    *closed = len < *segment;
                    continue;
                }
                runs.push(run.take().map(|(r, ..)| r).expect("checked Some above"));
            }
            run = Some((
                Run {
                    dest,
                    frames: vec![i],
                },
                len,
                len,
                len == 0,
            ));
        }
        if let Some((r, ..)) = run {
            runs.push(r);
        }
    }
    runs
}

/// A classic BPF socket filter that drops IPv4 datagrams whose source address is `me`
/// and passes every other one whole. Socket filters see a UDP datagram from its UDP
/// header; the IP header is reached through the kernel's `SKF_NET_OFF` window.
fn drop_from(me: Ipv4Addr) -> [socket2::SockFilter; 4] {
    use socket2::SockFilter;
    const SKF_NET_OFF: i32 = -0x10_0000;
    const IPV4_SOURCE: i32 = 12;
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    [
        SockFilter::new(LD_W_ABS, 0, 0, (SKF_NET_OFF + IPV4_SOURCE) as u32),
        // Equal: fall through to "drop"; otherwise skip it to "pass".
        SockFilter::new(JEQ_K, 0, 1, u32::from(me)),
        SockFilter::new(RET_K, 0, 0, 0),
        SockFilter::new(RET_K, 0, 0, u32::MAX),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(items: &[(usize, u8)]) -> Vec<(Bytes, SocketAddr)> {
        items
            .iter()
            .map(|&(len, host)| {
                (
                    Bytes::from(vec![host; len]),
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)), 5405),
                )
            })
            .collect()
    }

    fn shape(queued: &[(Bytes, SocketAddr)], runs: &[Run]) -> Vec<(u8, Vec<usize>)> {
        runs.iter()
            .map(|r| {
                let host = match r.dest.ip() {
                    IpAddr::V4(a) => a.octets()[3],
                    IpAddr::V6(_) => 0,
                };
                (host, r.frames.iter().map(|&i| queued[i].0.len()).collect())
            })
            .collect()
    }

    #[test]
    fn equal_frames_to_one_destination_share_a_run_and_a_short_one_ends_it() {
        let queued = q(&[(100, 2), (100, 2), (60, 2), (100, 2), (30, 2)]);
        let runs = plan_runs(&queued, 64, 1472, GSO_MAX_BYTES);
        assert_eq!(
            shape(&queued, &runs),
            vec![(2, vec![100, 100, 60]), (2, vec![100, 30])]
        );
    }

    #[test]
    fn a_longer_frame_starts_a_new_run() {
        let queued = q(&[(50, 2), (100, 2), (100, 2)]);
        let runs = plan_runs(&queued, 64, 1472, GSO_MAX_BYTES);
        assert_eq!(
            shape(&queued, &runs),
            vec![(2, vec![50]), (2, vec![100, 100])]
        );
    }

    #[test]
    fn runs_respect_the_segment_and_byte_limits() {
        let queued = q(&[(10, 2); 7]);
        let runs = plan_runs(&queued, 3, 1472, GSO_MAX_BYTES);
        assert_eq!(
            shape(&queued, &runs),
            vec![(2, vec![10, 10, 10]), (2, vec![10, 10, 10]), (2, vec![10])]
        );
        let runs = plan_runs(&queued, 64, 1472, 25);
        assert_eq!(
            shape(&queued, &runs),
            vec![
                (2, vec![10, 10]),
                (2, vec![10, 10]),
                (2, vec![10, 10]),
                (2, vec![10])
            ]
        );
    }

    #[test]
    fn the_destination_of_the_last_frame_goes_last_and_order_is_kept_per_destination() {
        // udpu visit: every frame to 2 and 3, then the token to 2.
        let queued = q(&[(100, 2), (100, 3), (90, 2), (90, 3), (20, 2)]);
        let runs = plan_runs(&queued, 64, 1472, GSO_MAX_BYTES);
        assert_eq!(
            shape(&queued, &runs),
            vec![(3, vec![100, 90]), (2, vec![100, 90]), (2, vec![20])]
        );
        let mut seen: Vec<usize> = runs.iter().flat_map(|r| r.frames.clone()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..queued.len()).collect::<Vec<_>>());
    }

    #[test]
    fn without_segmentation_every_frame_is_its_own_run() {
        let queued = q(&[(100, 2), (100, 2), (100, 3)]);
        let runs = plan_runs(&queued, 1, 1472, GSO_MAX_BYTES);
        assert_eq!(
            shape(&queued, &runs),
            vec![(2, vec![100]), (2, vec![100]), (3, vec![100])]
        );
    }

    #[test]
    fn frames_longer_than_the_path_carries_are_never_segments() {
        let queued = q(&[(2000, 2), (2000, 2), (1000, 2), (1000, 2)]);
        let runs = plan_runs(&queued, 64, 1472, GSO_MAX_BYTES);
        assert_eq!(
            shape(&queued, &runs),
            vec![(2, vec![2000]), (2, vec![2000]), (2, vec![1000, 1000])]
        );
    }

    #[test]
    fn the_loopback_path_carries_large_segments() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let limit = path_payload_limit(lo, &[SocketAddr::new(lo, 9)]);
        assert!(limit > 9000, "loopback payload limit {limit}");
    }

    #[test]
    fn the_own_source_filter_drops_only_our_own_datagrams() {
        use std::net::UdpSocket;
        use std::time::Duration;
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        socket2::SockRef::from(&rx)
            .attach_filter(&drop_from(Ipv4Addr::new(127, 0, 0, 1)))
            .unwrap();
        let to = rx.local_addr().unwrap();
        let own = UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = UdpSocket::bind("127.0.0.2:0").unwrap();
        own.send_to(b"own", to).unwrap();
        other.send_to(b"other", to).unwrap();
        own.send_to(b"own again", to).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = rx.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"other");
        assert_eq!(from.ip(), other.local_addr().unwrap().ip());
        assert!(
            rx.recv_from(&mut buf).is_err(),
            "a datagram from our own address passed"
        );
    }

    #[test]
    fn an_empty_frame_is_sent_alone() {
        let queued = q(&[(0, 2), (0, 2)]);
        let runs = plan_runs(&queued, 64, 1472, GSO_MAX_BYTES);
        assert_eq!(shape(&queued, &runs), vec![(2, vec![0]), (2, vec![0])]);
    }
}
