//! What starting a third-party server process (redis-server, nginx, HAProxy) for a
//! test takes: a free loopback port.

/// A free TCP port on loopback (bound and released; good enough for test servers).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
