//! `--drive URL`: the regression replay (or load test) of the app that `-- CMD` runs under
//! replay, in one command. It waits until the URL's port accepts connections, runs the
//! `llmsim-drive` driver against it, and counts the LLM calls as the ones this replayd
//! served.

use std::time::Duration;

use llmsim_drive::summary::LlmCalls;
use llmsim_drive::{Driver, Summary};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::report::Stats;

/// How often the port is tried while the app starts.
const POLL: Duration = Duration::from_millis(50);

/// Why the app could not be driven.
#[derive(Debug, thiserror::Error)]
pub enum DriveAppError {
    /// The app's port accepted no connection in time.
    #[error("{host}:{port} accepted no connection within {waited:?} (is the app listening there?)")]
    NotAccepting {
        /// The target's host.
        host: String,
        /// The target's port.
        port: u16,
        /// How long it was tried.
        waited: Duration,
    },
    /// The driver's threads could not be started.
    #[error("starting the driver's threads: {0}")]
    Threads(#[source] std::io::Error),
}

/// Waits until the driver's target accepts a connection, at most `wait`.
pub async fn wait_until_accepting(driver: &Driver, wait: Duration) -> Result<(), DriveAppError> {
    let deadline = Instant::now() + wait;
    let target = driver.target();
    loop {
        let attempt = tokio::time::timeout_at(deadline, TcpStream::connect(target.address())).await;
        match attempt {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(_)) if Instant::now() + POLL < deadline => tokio::time::sleep(POLL).await,
            _ => {
                return Err(DriveAppError::NotAccepting {
                    host: target.host.clone(),
                    port: target.port,
                    waited: wait,
                });
            }
        }
    }
}

/// Waits for the app, drives it, and sums up with the LLM calls `stats` counted as served.
pub async fn drive(
    driver: &Driver,
    wait: Duration,
    stats: &Stats,
) -> Result<Summary, DriveAppError> {
    wait_until_accepting(driver, wait).await?;
    let mut summary = driver.run().await.map_err(DriveAppError::Threads)?;
    summary.llm_calls = LlmCalls {
        count: stats.report().total_served,
        source: "replayd",
    };
    Ok(summary)
}
