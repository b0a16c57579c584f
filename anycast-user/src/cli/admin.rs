//! `anycast status | drain | undrain | detach` (and the readings of `anycast top`): talk to the running daemon over its admin
//! HTTP endpoint; when none answers and a config file is given, work on the pinned maps
//! directly (what the daemon would do; a daemon started later picks the overrides up).

use std::{net::SocketAddr, path::Path, time::Duration};

use anycast_user::{
    api::server::DrainReply,
    bgp,
    config::{Config, DEFAULT_LISTEN, DEFAULT_PIN_DIR},
    datapath::loader,
    model::status::Status,
    owner::Controller,
};
use anyhow::{Context, Result, bail};

/// Where to find the daemon and its files.
pub struct Target {
    pub admin: Option<SocketAddr>,
    pub config: Option<std::path::PathBuf>,
}

impl Target {
    fn config(&self) -> Result<Option<Config>> {
        self.config.as_deref().map(|p| Config::load(p).map_err(anyhow::Error::from)).transpose()
    }

    fn admin(&self, config: Option<&Config>) -> SocketAddr {
        self.admin
            .or(config.map(|c| c.admin.listen))
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default address parses"))
    }
}

enum Reply {
    Ok(String),
    /// The daemon answered with an error status.
    Refused(u16, String),
    /// Nobody listens (or the connection failed).
    Unreachable(String),
}

async fn http(method: &'static str, url: String) -> Reply {
    tokio::task::spawn_blocking(move || {
        // No proxy, whatever HTTP_PROXY/ALL_PROXY say (ureq reads them by default): the
        // daemon listens on this host, and a request sent to a proxy would find "no daemon"
        // and fall back to writing the pinned maps behind the running daemon's back.
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder()
                .proxy(None)
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(5)))
                .build(),
        );
        let res = match method {
            "POST" => agent.post(&url).send_empty(),
            _ => agent.get(&url).call(),
        };
        match res {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let body = r.body_mut().read_to_string().unwrap_or_default();
                if status < 300 { Reply::Ok(body) } else { Reply::Refused(status, body) }
            }
            Err(e) => Reply::Unreachable(e.to_string()),
        }
    })
    .await
    .unwrap_or_else(|e| Reply::Unreachable(e.to_string()))
}

/// What `anycast status` and `anycast top` show: from the daemon's `GET /status`, else
/// (no daemon answers and a config is given) from the pinned maps, with the reason for
/// that fallback (callers decide how often to warn: `top` reads every interval).
pub async fn fetch_status(target: &Target) -> Result<(Status, Option<String>)> {
    let config = target.config()?;
    let addr = target.admin(config.as_ref());
    Ok(match http("GET", format!("http://{addr}/status")).await {
        Reply::Ok(body) => (serde_json::from_str(&body).context("the daemon's /status reply")?, None),
        Reply::Refused(code, body) => bail!("the daemon at {addr} answered {code}: {}", body.trim()),
        Reply::Unreachable(why) => {
            let Some(config) = config else {
                bail!(
                    "no daemon answers at {addr} ({why}); give --config FILE to read the pinned maps instead"
                )
            };
            let mut controller = Controller::open_pinned(config)?;
            controller.sample()?;
            (
                controller.status()?,
                Some(format!("no daemon answers at {addr} ({why}); reading the pinned maps")),
            )
        }
    })
}

pub async fn status(target: &Target, json: bool) -> Result<()> {
    let (status, fallback) = fetch_status(target).await?;
    if let Some(why) = fallback {
        log::warn!("{why}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.table());
    }
    Ok(())
}

pub async fn drain(target: &Target, site: &str, drained: bool) -> Result<()> {
    let config = target.config()?;
    let addr = target.admin(config.as_ref());
    let verb = if drained { "drain" } else { "undrain" };
    let reply: DrainReply = match http("POST", format!("http://{addr}/{verb}/{site}")).await {
        Reply::Ok(body) => serde_json::from_str(&body).context("the daemon's reply")?,
        Reply::Refused(_, body) => bail!("{}", body.trim()),
        Reply::Unreachable(why) => {
            let Some(config) = config else {
                bail!(
                    "no daemon answers at {addr} ({why}); give --config FILE to apply it to the pinned maps"
                )
            };
            log::warn!("no daemon answers at {addr} ({why}); applying to the pinned maps");
            let weight = Controller::open_pinned(config)?.set_drained(site, drained)?;
            DrainReply { site: site.to_owned(), drained, weight }
        }
    };
    println!(
        "site {}: {} (weight {})",
        reply.site,
        if reply.drained { "drained: no new flows, established flows stay" } else { "undrained" },
        reply.weight
    );
    Ok(())
}

pub fn detach(pin_dir: Option<&Path>, config: Option<&Path>) -> Result<()> {
    let config = config.map(Config::load).transpose()?;
    let pin_dir = match (pin_dir, &config) {
        (Some(p), _) => p.to_owned(),
        (None, Some(c)) => c.datapath.pin_dir.clone(),
        (None, None) => DEFAULT_PIN_DIR.into(),
    };
    // Withdraw first: a detached data path must not keep attracting traffic. If BIRD does
    // not confirm, nothing is detached (the VIPs would be announced with nobody serving).
    if let Some((config, bgp)) = config.as_ref().and_then(|c| Some((c, c.bgp.as_ref()?))) {
        bgp::withdraw_all(config, bgp).context(
            "withdrawing the VIPs from BIRD before detaching; nothing detached (fix BIRD, or remove [bgp] \
             from the config to detach without withdrawing)",
        )?;
        println!("BGP: every VIP withdrawn ({} rewritten, BIRD reconfigured)", bgp.include.display());
    }
    let ifaces = loader::detach(&pin_dir)?;
    if ifaces.is_empty() {
        println!("nothing attached under {}; pins removed", pin_dir.display());
    } else {
        println!("detached from {}; pins under {} removed", ifaces.join(", "), pin_dir.display());
    }
    Ok(())
}
