//! Loopback ports for test servers that are stopped and started again on the same address.
//!
//! A port from `127.0.0.1:0` lies in the kernel's ephemeral range, where any outgoing
//! connection (a client reconnecting to some other server) may take it while its server is
//! down; the restart then cannot bind. Ports below that range are never handed out that way.
//! Every server of a test binary must pick through this one module (it is `common::ports`
//! everywhere), so two servers never get the same port from two counters.
#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the search starts: a spot that differs between processes, so test binaries that
/// run side by side rarely probe the same ports.
static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// `n` distinct loopback ports below the ephemeral range, free when picked. A port taken
/// by another program between now and its server binding it makes that server fail to
/// start: callers start again on other ports.
pub fn stable_ports(n: usize) -> Vec<u16> {
    let high = u32::from(ephemeral_start()).max(12_000);
    let low = 10_000u32;
    let span = high - low;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    let mut held = Vec::with_capacity(n);
    for _ in 0..span {
        if held.len() == n {
            break;
        }
        let port = low + NEXT.fetch_add(1, Ordering::SeqCst) % span;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port as u16)) {
            held.push(listener);
        }
    }
    assert_eq!(
        held.len(),
        n,
        "no {n} free loopback ports below the ephemeral range"
    );
    held.iter()
        .map(|l| l.local_addr().expect("its address").port())
        .collect()
}
