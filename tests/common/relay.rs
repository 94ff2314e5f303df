//! A TCP relay on loopback between one client and a server, which a test can cut: every
//! connection through it is closed at once, and new ones are closed as they arrive, until it is
//! restored. Cuts one client off while the server stays up for the others. It can also lose
//! the answer to one commit: the server commits, the client never hears so; and it can hold
//! back the notifications a listening connection would receive (a late change feed).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    /// Armed by `lose_answer_to_commit_with`: what the client's COMMIT message must contain.
    lose: Mutex<Option<Vec<u8>>>,
    /// Answers lost so far.
    lost: AtomicUsize,
    /// Set by `hold_notifications`: connections that sent a LISTEN receive nothing.
    hold: AtomicBool,
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

    /// Once: the next message from a client that holds a COMMIT and `marker` reaches the
    /// server, but nothing the server answers on that connection reaches the client, and the
    /// connection closes a moment later (the client cannot tell whether it committed).
    pub fn lose_answer_to_commit_with(&self, marker: &[u8]) {
        *self.state.lose.lock().unwrap() = Some(marker.to_vec());
    }

    /// Until `release_notifications`, nothing the server sends reaches a client on a
    /// connection where the client sent a LISTEN: its change notifications arrive late.
    pub fn hold_notifications(&self) {
        self.state.hold.store(true, Ordering::SeqCst);
    }

    pub fn release_notifications(&self) {
        self.state.hold.store(false, Ordering::SeqCst);
    }

    /// How many answers `lose_answer_to_commit_with` has lost.
    pub fn answers_lost(&self) -> usize {
        self.state.lost.load(Ordering::SeqCst)
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
fn relay(st: &Arc<State>, client: TcpStream, server: TcpStream) {
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
    let deaf = Arc::new(AtomicBool::new(false));
    let listens = Arc::new(AtomicBool::new(false));
    let upstream = Upstream {
        st: st.clone(),
        deaf: deaf.clone(),
        listens: listens.clone(),
    };
    let downstream = Downstream {
        st: st.clone(),
        deaf,
        listens,
    };
    std::thread::spawn(move || pipe(client, s2, Some(upstream), None));
    std::thread::spawn(move || pipe(server, c2, None, Some(downstream)));
}

/// The client-to-server side of a connection, watching for the commit whose answer is lost.
struct Upstream {
    st: Arc<State>,
    /// Set once the server's answers on this connection are to be dropped.
    deaf: Arc<AtomicBool>,
    /// Set once the client sent a LISTEN on this connection.
    listens: Arc<AtomicBool>,
}

/// The server-to-client side of a connection.
struct Downstream {
    st: Arc<State>,
    deaf: Arc<AtomicBool>,
    listens: Arc<AtomicBool>,
}

impl Downstream {
    /// Whether what the server sent is dropped; waits first while notifications are held.
    fn drops(&self) -> bool {
        while self.listens.load(Ordering::SeqCst)
            && self.st.hold.load(Ordering::SeqCst)
            && !self.st.stopping.load(Ordering::SeqCst)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.deaf.load(Ordering::SeqCst)
    }
}

impl Upstream {
    /// After `sent` reached the server: whether its answer is the one to lose.
    fn loses_answer_to(&self, sent: &[u8]) -> bool {
        if contains(sent, b"LISTEN") {
            self.listens.store(true, Ordering::SeqCst);
        }
        let mut lose = self.st.lose.lock().unwrap();
        let hit = lose
            .as_ref()
            .is_some_and(|marker| contains(sent, b"COMMIT") && contains(sent, marker));
        if hit {
            *lose = None;
            self.deaf.store(true, Ordering::SeqCst);
            self.st.lost.fetch_add(1, Ordering::SeqCst);
        }
        hit
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Copies `from` into `to` until either side closes, then closes both. Upstream, watches for
/// the commit whose answer is lost and for a LISTEN; downstream, drops what comes once the
/// connection is deaf, and holds it while notifications are held.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    upstream: Option<Upstream>,
    downstream: Option<Downstream>,
) {
    let mut buf = [0u8; 16 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if downstream.as_ref().is_some_and(Downstream::drops) {
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                if upstream
                    .as_ref()
                    .is_some_and(|u| u.loses_answer_to(&buf[..n]))
                {
                    // the server commits and answers into the void; then the line drops
                    std::thread::sleep(Duration::from_millis(500));
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
