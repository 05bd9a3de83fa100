//! From flags to a [`Plan`]: the target parsed and resolved, the protocol and
//! mode settled, the run length and upgrade schedule computed, and every
//! inconsistency rejected before anything starts (exit status 2).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use handover_loadgen::{LoadConfig, Mode, Protocol};

use super::Args;

/// Bound on `--lines` (a whole exchange must fit in the socket buffers and
/// the request timeout).
const MAX_LINES: usize = 1000;

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Reuse each connection (HTTP/1.1 keep-alive).
    #[value(name = "keepalive", alias = "keep-alive")]
    KeepAlive,
    /// A new connection per request.
    Close,
    /// Half of the connections each way.
    Mixed,
}

/// `--protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolArg {
    /// HTTP/1.1 GET requests.
    Http,
    /// Connect, write a line, read a line, close.
    Tcp,
    /// Connections open for the whole run, a line exchanged every --interval.
    LongLived,
}

/// Everything the run needs, validated.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The target as given.
    pub target: String,
    /// The load configuration (address, protocol, duration, bounds).
    pub load: LoadConfig,
    /// The upgrade command, if any.
    pub upgrade: Option<String>,
    /// Time between upgrade command starts.
    pub every: Duration,
    /// How many upgrades at most (`None`: as many as fit in the run).
    pub upgrade_count: Option<u32>,
    pub window_tail: Duration,
    pub upgrade_timeout: Duration,
    pub json: bool,
    pub plot: Option<PathBuf>,
    pub progress: bool,
}

impl Plan {
    pub fn from_args(args: &Args) -> anyhow::Result<Plan> {
        let target = Target::parse(&args.target)?;
        let protocol = match (args.protocol, target.scheme) {
            (None, Scheme::Http) => Protocol::Http,
            (None, Scheme::Tcp) => Protocol::Tcp,
            (Some(ProtocolArg::Http), Scheme::Http) => Protocol::Http,
            (Some(ProtocolArg::Tcp), Scheme::Tcp) => Protocol::Tcp,
            (Some(ProtocolArg::LongLived), Scheme::Tcp) => Protocol::LongLived,
            (Some(protocol), scheme) => bail!(
                "--protocol {protocol:?} does not go with a {scheme:?} target ({}); \
                 use http://HOST:PORT/PATH for http and tcp://HOST:PORT for tcp and long-lived",
                args.target
            ),
        };
        ensure!(args.connections > 0, "--connections must be at least 1");
        ensure!(args.max_requests > 0, "--max-requests must be at least 1");
        ensure!(!args.every.is_zero(), "--every must be longer than 0");
        ensure!(!args.interval.is_zero(), "--interval must be longer than 0");
        ensure!(!args.timeout.is_zero(), "--timeout must be longer than 0");
        ensure!(
            !args.connect_timeout.is_zero(),
            "--connect-timeout must be longer than 0"
        );
        ensure!(
            !args.upgrade_timeout.is_zero(),
            "--upgrade-timeout must be longer than 0"
        );
        if args.upgrade.is_none() && args.upgrade_count.is_some() {
            bail!("--upgrade-count needs --upgrade CMD");
        }
        if args.upgrade_count == Some(0) {
            bail!(
                "--upgrade-count must be at least 1 (leave out --upgrade for a steady-state run)"
            );
        }
        let duration = match (args.duration, args.upgrade_count) {
            (Some(duration), _) => duration,
            (None, Some(n)) => args.every * (n + 1),
            (None, None) => Duration::from_secs(30),
        };
        ensure!(!duration.is_zero(), "--duration must be longer than 0");
        if args.upgrade.is_some() && args.every >= duration {
            bail!(
                "no upgrade would run: the first starts after --every ({}) but the run lasts {}",
                humantime::format_duration(args.every),
                humantime::format_duration(duration)
            );
        }
        if let Some(plot) = &args.plot {
            let svg = plot
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("svg"));
            ensure!(
                svg,
                "--plot {}: only SVG is supported; name the file *.svg",
                plot.display()
            );
        }
        let line_protocol = matches!(protocol, Protocol::Tcp | Protocol::LongLived);
        ensure!(
            line_protocol || !args.echo_check,
            "--echo-check goes with the tcp and long-lived protocols (a tcp:// target)"
        );
        ensure!(
            line_protocol || args.lines == 1,
            "--lines goes with the tcp and long-lived protocols (a tcp:// target)"
        );
        ensure!(
            (1..=MAX_LINES).contains(&args.lines),
            "--lines must be from 1 to {MAX_LINES}"
        );
        ensure!(
            !args.echo_check || !args.message.trim_end_matches('\n').contains('\n'),
            "--echo-check needs a one-line --message (it is sent after the line's number)"
        );
        let mut message = args.message.clone().into_bytes();
        if !message.ends_with(b"\n") {
            message.push(b'\n');
        }
        let mode = match (protocol, args.mode) {
            (Protocol::Http, ModeArg::KeepAlive) => Mode::KeepAlive,
            (Protocol::Http, ModeArg::Close) => Mode::Close,
            (Protocol::Http, ModeArg::Mixed) => Mode::Mixed,
            // The line protocols fix how connections are used.
            (Protocol::Tcp, _) => Mode::Close,
            (Protocol::LongLived, _) => Mode::KeepAlive,
        };
        let load = LoadConfig::new(target.addr)
            .path(target.path)
            .host(target.host)
            .protocol(protocol)
            .mode(mode)
            .connections(args.connections)
            .duration(duration)
            .max_requests(args.max_requests)
            .request_timeout(args.timeout)
            .connect_timeout(args.connect_timeout)
            .message(message)
            .interval(args.interval)
            .echo_check(args.echo_check)
            .lines_per_exchange(args.lines);
        Ok(Plan {
            target: args.target.clone(),
            load,
            upgrade: args.upgrade.clone(),
            every: args.every,
            upgrade_count: args.upgrade_count,
            window_tail: args.window_tail,
            upgrade_timeout: args.upgrade_timeout,
            json: args.json,
            plot: args.plot.clone(),
            progress: !args.no_progress,
        })
    }

    /// How many upgrades the schedule holds: one every `every`, strictly
    /// inside the run, capped by `--upgrade-count`.
    pub fn planned_upgrades(&self) -> u32 {
        if self.upgrade.is_none() {
            return 0;
        }
        let fit = (self.load.duration.as_nanos().saturating_sub(1) / self.every.as_nanos()) as u64;
        let fit = u32::try_from(fit).unwrap_or(u32::MAX);
        self.upgrade_count.map_or(fit, |n| n.min(fit))
    }

    /// The protocol's name in reports.
    pub fn protocol_name(&self) -> &'static str {
        match self.load.protocol {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
            Protocol::LongLived => "long-lived",
        }
    }

    /// The effective connection use in reports.
    pub fn mode_name(&self) -> &'static str {
        match self.load.mode {
            Mode::KeepAlive => "keepalive",
            Mode::Close => "close",
            Mode::Mixed => "mixed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Tcp,
}

/// A parsed `--target`.
#[derive(Debug)]
struct Target {
    scheme: Scheme,
    /// The authority as written (the `Host` header).
    host: String,
    path: String,
    addr: SocketAddr,
}

impl Target {
    fn parse(text: &str) -> anyhow::Result<Target> {
        let (scheme, rest) = if let Some(rest) = text.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = text.strip_prefix("tcp://") {
            (Scheme::Tcp, rest)
        } else if text.starts_with("https://") {
            bail!("--target {text}: https is not supported (plain HTTP/1.1 only)");
        } else if let Some((scheme, _)) = text.split_once("://") {
            bail!("--target {text}: unknown scheme {scheme:?}; use http:// or tcp://");
        } else {
            bail!("--target {text}: give a scheme, e.g. http://{text}/ or tcp://{text}");
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        ensure!(!authority.is_empty(), "--target {text}: no host");
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.split('#').next().unwrap_or("/").to_owned(),
        };
        if scheme == Scheme::Tcp {
            ensure!(path == "/", "--target {text}: a tcp:// target has no path");
        }
        let (host, port) = split_host_port(authority)
            .with_context(|| format!("--target {text}: cannot read HOST:PORT"))?;
        let port = match (port, scheme) {
            (Some(port), _) => port,
            (None, Scheme::Http) => 80,
            (None, Scheme::Tcp) => bail!("--target {text}: a tcp:// target needs a port"),
        };
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .with_context(|| format!("--target {text}: cannot resolve {host}"))?
            .next()
            .with_context(|| format!("--target {text}: {host} has no address"))?;
        Ok(Target {
            scheme,
            host: authority.to_owned(),
            path,
            addr,
        })
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(authority: &str) -> anyhow::Result<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']').context("unclosed [")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').context("junk after ]")?),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    ensure!(!host.is_empty(), "empty host");
    let port = port
        .map(|p| p.parse::<u16>().with_context(|| format!("bad port {p:?}")))
        .transpose()?;
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("http://127.0.0.1:8080/x?y=1").unwrap();
        assert_eq!(
            (t.scheme, t.host.as_str(), t.path.as_str()),
            (Scheme::Http, "127.0.0.1:8080", "/x?y=1")
        );
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        let t = Target::parse("http://[::1]:9").unwrap();
        assert_eq!((t.path.as_str(), t.addr), ("/", "[::1]:9".parse().unwrap()));
        assert_eq!(Target::parse("http://127.0.0.1").unwrap().addr.port(), 80);
        let t = Target::parse("tcp://127.0.0.1:7").unwrap();
        assert_eq!(t.scheme, Scheme::Tcp);
        for bad in [
            "127.0.0.1:80",
            "https://127.0.0.1/",
            "ftp://x/",
            "http://:80/",
            "http://127.0.0.1:99999/",
            "tcp://127.0.0.1",
            "tcp://127.0.0.1:5/path",
            "http://[::1/",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
