//! UDP transport for Totem frames: multicast to a group (`transport: udp`) or unicast to
//! every configured member (`transport: udpu`), plus unicast to one node for the token.
//!
//! Node ids are learned from the frames each node builds itself (joins, tokens, commit
//! tokens, merge detects): an mcast frame may be a retransmission by another node, so its
//! sender field says nothing of where it came from. For `udpu` members whose node id is
//! their IPv4 address (corosync's default), the address is known before hearing from them.

use std::collections::BTreeMap;
use std::io::{self, IoSlice};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::Bytes;
use log::{debug, trace};
use rustix::net::addr::SocketAddrArg;
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
use socket2::{Domain, Protocol, Socket, Type};

use crate::crypto::FrameCrypto;
use totem::wire::{Frame, FrameKind, MAGIC};
use totem::{Dest, NodeId};

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
    recv_buf: Vec<u8>,
    /// Datagrams queued by [`Transport::send`] for the next [`Transport::flush`], in
    /// order, with their destination.
    queued: Vec<(Bytes, SocketAddr)>,
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
                        socket.set_multicast_loop_v4(true)?;
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
        let std_socket: std::net::UdpSocket = socket.into();
        Ok(Transport {
            socket: mio::net::UdpSocket::from_std(std_socket),
            cfg,
            my_addr,
            peers,
            targets,
            recv_buf: vec![0; 65_536],
            queued: Vec::new(),
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

    /// Sends every queued frame, as few `sendmmsg` calls as it takes: one system call
    /// for all the frames (and all the members, with udpu) of a token visit.
    pub fn flush(&mut self) {
        /// Datagrams per call (the kernel takes at most UIO_MAXIOV = 1024).
        const BATCH: usize = 256;
        let queued = std::mem::take(&mut self.queued);
        let mut rest = &queued[..];
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
        let mut queued = queued;
        queued.clear();
        self.queued = queued; // keep the allocation
    }

    /// One datagram, or `None` when the socket has no more for now.
    pub fn recv(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            match self.socket.recv_from(&mut self.recv_buf) {
                Ok((n, from)) => {
                    self.stats.datagrams_received += 1;
                    let frame = match &self.crypto {
                        Some(c) => match c.open(&self.recv_buf[..n]) {
                            Some(f) => f,
                            None => {
                                self.stats.bad_auth += 1;
                                debug!(target: "totem", "dropping a datagram from {from} that fails authentication");
                                continue;
                            }
                        },
                        None => Bytes::copy_from_slice(&self.recv_buf[..n]),
                    };
                    self.learn(&frame, from);
                    return Ok(Some(frame));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // ICMP errors from an earlier send surface here on Linux; not ours to fail on.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            }
        }
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
