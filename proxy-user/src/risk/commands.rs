//! `rasp-proxy bans …` and `rasp-proxy identities …`: the self-protection loop's state, from the daemon's admin
//! API (which holds the chains of events), falling back to the pinned maps for bans when no daemon answers.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use clap::Subcommand;

use crate::{
    Error,
    addr::parse_addr,
    cli::PinDirArg,
    xdp::{KernelMaps, PinDir, commands::print_json},
};

#[derive(Debug, Subcommand)]
pub enum BansCommand {
    /// Every ban with its reason, time left and the events that led to it.
    List {
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// Why one address is banned: the kernel's entry and the chain of events (rules, locations, excerpts).
    Explain {
        addr: String,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// Lift a ban (the source keeps its strikes, so a repeat offence bans it for longer).
    Lift {
        addr: String,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
pub enum IdentitiesCommand {
    /// Identities refused at L7, with time left and the chain of events.
    Blocked {
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
    /// Lift an identity block (`jwt:ISSUER:SUBJECT` or `api_key:NAME`, as `blocked` prints it).
    Unblock {
        identity: String,
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
    },
}

pub fn run_bans(pins: &PinDirArg, cmd: &BansCommand) -> Result<(), Error> {
    match cmd {
        BansCommand::List { admin } => match admin_call(*admin, "GET", "/admin/bans") {
            Ok(body) => print_pretty(&body),
            Err(e) => {
                tracing::warn!(error = %e, "no daemon answered; showing the kernel's bans only");
                let maps = KernelMaps::open(&PinDir::new(&pins.pin_dir))?;
                print_json(&serde_json::json!(maps.bans()?))
            }
        },
        BansCommand::Explain { addr, admin } => {
            let ip = parse_addr(addr)?;
            match admin_call(*admin, "GET", &format!("/admin/bans/{ip}")) {
                Ok(body) => print_pretty(&body),
                Err(e) => {
                    tracing::warn!(error = %e, "no daemon answered; showing the kernel's entry only");
                    let maps = KernelMaps::open(&PinDir::new(&pins.pin_dir))?;
                    match maps.ban_of(ip)? {
                        Some(ban) => print_json(&serde_json::json!({ "addr": ip, "ban": ban, "chain": [] })),
                        None => Err(Error::Other(format!("{ip} is not banned"))),
                    }
                }
            }
        }
        BansCommand::Lift { addr, admin } => {
            let ip = parse_addr(addr)?;
            if let Ok(body) = admin_call(*admin, "DELETE", &format!("/admin/bans/{ip}")) {
                print_pretty(&body)
            } else {
                let lifted = KernelMaps::open(&PinDir::new(&pins.pin_dir))?.unban(ip)?;
                print_json(&serde_json::json!({ "lifted": lifted }))
            }
        }
    }
}

pub fn run_identities(cmd: &IdentitiesCommand) -> Result<(), Error> {
    let body = match cmd {
        IdentitiesCommand::Blocked { admin } => admin_call(*admin, "GET", "/admin/identities"),
        IdentitiesCommand::Unblock { identity, admin } => admin_call(
            *admin,
            "DELETE",
            &format!("/admin/identities/{}", percent_encode(identity)),
        ),
    }
    .map_err(|e| Error::Other(format!("the daemon's admin API did not answer: {e}")))?;
    print_pretty(&body)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One HTTP/1.1 request to the admin listener (loopback, trusted, small answers); returns the body of a 2xx.
fn admin_call(admin: SocketAddr, method: &str, path: &str) -> Result<String, String> {
    let timeout = Duration::from_secs(3);
    let mut s = TcpStream::connect_timeout(&admin, timeout).map_err(|e| format!("connect {admin}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    // Bounded: the admin answers are a few KiB; 16 MiB is far beyond any of them.
    s.take(16 << 20)
        .read_to_end(&mut raw)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed answer")?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("malformed status line")?;
    if (200..300).contains(&status) {
        Ok(body.to_owned())
    } else {
        Err(format!("HTTP {status}: {body}"))
    }
}

fn print_pretty(body: &str) -> Result<(), Error> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        print_json(&v)
    } else {
        println!("{body}");
        Ok(())
    }
}
