//! A TCP relay between wxtoken and a server's loopback port, which a test cuts at a chosen
//! moment: the network between a host and its database going away. `std::net` only.
//!
//! A cut closes both sides of every relayed connection (each end reads EOF, as after a
//! reset), and the relay stops listening, so a reconnect is refused. A silent loss, where
//! packets just vanish, cannot be played in user space: this process's kernel would still
//! acknowledge the client's packets and keepalive probes.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub struct Relay {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    cut: AtomicBool,
    accepted: AtomicUsize,
    /// Both ends of every connection relayed so far, to close them on a cut.
    streams: Mutex<Vec<TcpStream>>,
}

impl Relay {
    /// Listens on a free loopback port and relays each connection to `target`.
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let addr = listener.local_addr().expect("relay address");
        let shared = Arc::new(Shared::default());
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.cut.load(Ordering::SeqCst) {
                    // Dropping the listener: later connections are refused.
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                accepting.accepted.fetch_add(1, Ordering::SeqCst);
                let mut streams = accepting.streams.lock().unwrap();
                for s in [&client, &server] {
                    streams.push(s.try_clone().expect("clone a relayed stream"));
                }
                drop(streams);
                pump(&client, &server);
                pump(&server, &client);
            }
        });
        Relay { addr, shared }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections relayed so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Cuts every connection and refuses new ones.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        for s in self.shared.streams.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the accepting thread so that it sees the cut and closes the listener.
        let _ = TcpStream::connect(self.addr);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Copies `from` into `to` on a thread until either ends; then closes both.
fn pump(from: &TcpStream, to: &TcpStream) {
    let (mut from, mut to) = (
        from.try_clone().expect("clone a relayed stream"),
        to.try_clone().expect("clone a relayed stream"),
    );
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}
