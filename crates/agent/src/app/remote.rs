//! Start-up of the remote modes (MQTT, IoT Hub): probe the data directory's lock, start the
//! transport, wait briefly for the desired configuration, choose the configuration to start
//! with, then hand over to the run loop ([`super::run_agent`]). It lives in `app` because it
//! composes a transport with the run loop; the transport layer knows nothing of `app`.
//!
//! The configuration at start:
//! - the broker/hub answered within [`STARTUP_WAIT`] with a valid desired document (or none:
//!   defaults) -> monitoring starts with it;
//! - it answered with an invalid or unreadable document -> the agent stays connected, collects
//!   nothing, reports the errors in `reported.twinguard`, and starts when a valid document
//!   arrives (SPEC §2): the run loop receives the document through `poll_desired`;
//! - it could not be reached in time -> monitoring starts with the defaults and events
//!   accumulate in the cache; the desired document applies when the connection comes up.
//!   (Waiting instead would leave a device that boots during an outage unmonitored.)

use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use super::run::{run_agent, RunError, Synthetic};
use super::signals::block_termination_signals;
use crate::datadir::DataDir;
use crate::transport::iothub::{IotHubOptions, IotHubTransport};
use crate::transport::mqtt::{MqttOptions, MqttTransport};
use crate::transport::DesiredUpdate;
use twinguard_core::config::{Config, Problem};

/// How long start-up waits for the broker or hub before starting with the defaults.
pub(crate) const STARTUP_WAIT: Duration = Duration::from_secs(5);

/// The configuration to start with, and whether the start-up document was used (so the
/// transport must not hand it over again).
fn initial_config(update: Option<&DesiredUpdate>) -> (Option<(Config, Vec<Problem>)>, bool) {
    match update {
        None => {
            warn!(
                "the broker or hub was not reached within {STARTUP_WAIT:?}: monitoring starts with the defaults; the desired configuration applies when it arrives"
            );
            (Some((Config::default(), Vec::new())), false)
        }
        Some(update) => {
            if *update == DesiredUpdate::Cleared {
                info!("no desired configuration: the defaults apply");
            }
            match update.validate() {
                Ok(v) => match v.config {
                    Some(config) => (Some((config, v.problems)), true),
                    None => {
                        warn!("the desired configuration is not valid: staying connected, collecting nothing until a valid one arrives");
                        (None, false)
                    }
                },
                Err(why) => {
                    warn!("the desired configuration cannot be read ({why}): staying connected, collecting nothing until a valid one arrives");
                    (None, false)
                }
            }
        }
    }
}

/// Opens and locks the data directory before connecting: a second agent with the same client
/// id would take the first one's MQTT session away.
fn probe_data_dir(data_dir: &Path) -> Result<DataDir, RunError> {
    Ok(DataDir::open(data_dir)?)
}

/// Runs the agent in MQTT mode until SIGINT/SIGTERM.
pub fn run_mqtt(
    options: &MqttOptions,
    data_dir: &Path,
    synthetic: Option<Synthetic>,
) -> Result<(), RunError> {
    let signals = block_termination_signals().map_err(RunError::Signals)?;
    let data_dir = probe_data_dir(data_dir)?;
    info!(broker = %options.broker, prefix = %options.prefix, device = %options.device_id, "twinguard starting in MQTT mode");
    let mut transport = MqttTransport::start(options)?;
    let update = transport.startup(STARTUP_WAIT);
    let (initial, used) = initial_config(update.as_ref());
    if used {
        transport.mark_handed();
    }
    run_agent(signals, Box::new(transport), data_dir, initial, synthetic)
}

/// Runs the agent in IoT Hub mode until SIGINT/SIGTERM.
pub fn run_iothub(
    options: &IotHubOptions,
    data_dir: &Path,
    synthetic: Option<Synthetic>,
) -> Result<(), RunError> {
    let signals = block_termination_signals().map_err(RunError::Signals)?;
    let data_dir = probe_data_dir(data_dir)?;
    let mut transport = IotHubTransport::start(options)?;
    info!(transport = %crate::transport::Transport::describe(&transport), "twinguard starting in IoT Hub mode");
    let update = transport.startup(STARTUP_WAIT);
    let (initial, used) = initial_config(update.as_ref());
    if used {
        transport.mark_handed();
    }
    run_agent(signals, Box::new(transport), data_dir, initial, synthetic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn start_up_decisions() {
        let (c, used) = initial_config(None);
        assert!(c.is_some() && !used);
        let (c, used) = initial_config(Some(&DesiredUpdate::Cleared));
        assert!(c.is_some() && used);
        let (c, used) = initial_config(Some(&DesiredUpdate::Unreadable("x".into())));
        assert!(c.is_none() && !used);
        let bad = DesiredUpdate::Document {
            doc: json!({"snapshotFrequency": {"value": "soon"}}),
            version: None,
        };
        let (c, used) = initial_config(Some(&bad));
        assert!(c.is_none() && !used);
        let good = DesiredUpdate::Document {
            doc: json!({"snapshotFrequency": {"value": "PT1H"}}),
            version: Some(3),
        };
        let (c, used) = initial_config(Some(&good));
        assert!(c.is_some() && used);
    }
}
