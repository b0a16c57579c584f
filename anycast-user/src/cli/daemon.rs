//! `anycast run [--config FILE]`: the daemon (anycast_user::daemon).

use std::path::Path;

use anycast_user::daemon::{self, Options};
use anyhow::Result;

pub async fn run(config: &Path, object: Option<&Path>, allow_no_forwarding: bool) -> Result<()> {
    let options = Options { object: object.map(Path::to_owned), allow_no_forwarding };
    daemon::run(config, &options).await?;
    Ok(())
}
