//! `Nginx`: nginx running the shipped deploy/nginx/nginx.conf in front of gateways,
//! rewritten to loopback.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use super::deploy_config::{deploy_file, replace_marked};
use super::server_process::{free_port, scratch_dir, wait_listening};

/// nginx running deploy/nginx/nginx.conf (upstreams and listen address rewritten to
/// loopback, as tests/load_balancer.rs does); killed on drop.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Nginx {
    pub fn start(upstreams: &[SocketAddr]) -> Nginx {
        let dir = scratch_dir("nginx");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let shipped = deploy_file("deploy/nginx/nginx.conf");
        let servers: Vec<String> = upstreams
            .iter()
            .map(|u| format!("        server {u} max_fails=1 fail_timeout=10s;"))
            .collect();
        let config = replace_marked(&shipped, "upstreams", &servers);
        let config = replace_marked(&config, "listen", &[format!("        listen {addr};")]);
        let config = config.replace("worker_processes auto;", "worker_processes 1;");
        let path = dir.join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        // One process, no master: killing the child on drop then leaves no orphaned
        // worker behind (a SIGKILLed master does not take its workers with it).
        let globals = format!(
            "daemon off; master_process off; pid {}/nginx.pid; error_log {}/error.log;",
            dir.display(),
            dir.display()
        );
        let mut child = Command::new("nginx")
            .args([
                "-p",
                dir.to_str().unwrap(),
                "-c",
                path.to_str().unwrap(),
                "-g",
                &globals,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (apt-get install nginx)");
        wait_listening(addr, &mut child);
        Nginx { child, addr, dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
