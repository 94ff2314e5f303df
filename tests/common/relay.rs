//! A TCP relay on loopback between one client and a server, which a test can cut: every
//! connection through it is closed at once, and new ones are closed as they arrive, until it is
//! restored. Cuts one client off while the server stays up for the others.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct Relay {
    addr: SocketAddr,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    cut: AtomicBool,
    stopping: AtomicBool,
    /// Both ends of every relayed connection, to close them at a cut.
    streams: Mutex<Vec<TcpStream>>,
}

impl Relay {
    /// A relay to `target`, listening on a free loopback port.
    pub fn to(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay port");
        let addr = listener.local_addr().expect("relay address");
        let state = Arc::new(State::default());
        let st = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if st.cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                relay(&st, client, server);
            }
        });
        Relay { addr, state }
    }

    /// A relay in front of the PostgreSQL server `url` names, and the same URL through it.
    pub fn in_front_of(url: &str) -> (Relay, String) {
        let (head, rest) = url.split_once('@').expect("a URL with user@host");
        let (host, db) = rest.split_once('/').expect("a URL with a database");
        let target: SocketAddr = host.parse().expect("host:port of an IP address");
        let relay = Relay::to(target);
        let through = format!("{head}@{}/{db}", relay.addr);
        (relay, through)
    }

    /// Closes every connection through the relay, and each new one, until `restore`.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        for s in self.state.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        self.cut();
        // wakes the accepting thread, which then ends
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies bytes both ways between `client` and `server` on two threads.
fn relay(st: &State, client: TcpStream, server: TcpStream) {
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    {
        let mut streams = st.streams.lock().unwrap();
        for s in [&client, &server] {
            if let Ok(s) = s.try_clone() {
                streams.push(s);
            }
        }
    }
    std::thread::spawn(move || pipe(client, s2));
    std::thread::spawn(move || pipe(server, c2));
}

/// Copies `from` into `to` until either side closes, then closes both.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16 << 10];
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
}
