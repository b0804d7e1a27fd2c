//! What `/healthz` says: the state of the service's dependencies (vSphere, the `sdci-agent`
//! gateway) and the alerts raised for things only an operator can fix.
//!
//! Invariants:
//! - A dependency that is down makes the service *degraded*, not dead: webhooks are still
//!   stored and answered, and work resumes by itself when the dependency is back.
//! - An alert is raised once per key (a configuration key, a pool, a status) while it stands:
//!   one log line at error level, one Slack message when Slack is configured, a counter in
//!   `/metrics` (`alerts_raised` and `alert_<kind>`); `/healthz` is not ok while any alert
//!   stands. Clearing is explicit (the condition went away) or a restart.

use crate::config::NotifyConfig;
use crate::gateway::slack;
use crate::metrics::Metrics;
use crate::now_ms;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// One dependency as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub ok: bool,
    /// When it last changed between ok and not ok, Unix ms.
    pub since_ms: i64,
    pub detail: String,
}

impl Dependency {
    fn new(ok: bool, detail: &str) -> Self {
        Self {
            ok,
            since_ms: now_ms(),
            detail: detail.to_owned(),
        }
    }
}

/// A standing alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub key: String,
    pub message: String,
    pub since_ms: i64,
}

/// The dependencies and alerts of one `serve` process.
pub struct Health {
    vsphere: Mutex<Dependency>,
    gateway: Mutex<Dependency>,
    alerts: Mutex<BTreeMap<String, Alert>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            vsphere: Mutex::new(Dependency::new(false, "connecting")),
            gateway: Mutex::new(Dependency::new(true, "")),
            alerts: Mutex::new(BTreeMap::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn set(dep: &Mutex<Dependency>, name: &str, ok: bool, detail: &str) {
    let mut d = lock(dep);
    if d.ok != ok {
        if ok {
            tracing::info!(dependency = name, "available again");
        } else {
            tracing::warn!(dependency = name, %detail, "unavailable: degraded until it is back");
        }
        *d = Dependency::new(ok, detail);
    } else {
        d.detail = detail.to_owned();
    }
}

impl Health {
    /// vSphere answered (`ok`) or did not (with why).
    pub fn set_vsphere(&self, ok: bool, detail: &str) {
        set(&self.vsphere, "vSphere", ok, detail);
    }

    /// The `sdci-agent` gateway (and GitHub behind it) answered, or could not.
    pub fn set_gateway(&self, ok: bool, detail: &str) {
        set(&self.gateway, "sdci-agent gateway", ok, detail);
    }

    pub fn vsphere(&self) -> Dependency {
        lock(&self.vsphere).clone()
    }

    pub fn gateway(&self) -> Dependency {
        lock(&self.gateway).clone()
    }

    /// Raises the alert `key` (e.g. `config:[dom0] password_file`, `pool:4.2`, `status:17`)
    /// unless it already stands: logged at error level, counted, and sent to Slack when
    /// `notify.slack_webhook_file` is set. Returns whether it was new.
    pub fn alert(
        &self,
        notify: &NotifyConfig,
        metrics: &Metrics,
        key: &str,
        message: &str,
    ) -> bool {
        {
            let mut alerts = lock(&self.alerts);
            if alerts.contains_key(key) {
                return false;
            }
            alerts.insert(
                key.to_owned(),
                Alert {
                    key: key.to_owned(),
                    message: message.to_owned(),
                    since_ms: now_ms(),
                },
            );
        }
        tracing::error!(alert = key, "{message}");
        metrics.count("alerts_raised");
        let kind = key.split(':').next().unwrap_or("other");
        metrics.count(&format!("alert_{kind}"));
        send_to_slack(notify, message);
        true
    }

    /// The condition behind `key` went away.
    pub fn clear_alert(&self, key: &str) {
        if lock(&self.alerts).remove(key).is_some() {
            tracing::info!(alert = key, "alert cleared");
        }
    }

    pub fn alerts(&self) -> Vec<Alert> {
        lock(&self.alerts).values().cloned().collect()
    }

    /// `(ok, text)` for `/healthz`: `ok` when every dependency answers and no alert stands;
    /// the text names each one that does not, and each alert.
    pub fn report(&self) -> (bool, String) {
        let mut lines = Vec::new();
        for (name, d) in [("vsphere", self.vsphere()), ("gateway", self.gateway())] {
            if !d.ok {
                lines.push(format!(
                    "degraded: {name} unavailable for {}s: {}",
                    (now_ms() - d.since_ms).max(0) / 1000,
                    d.detail
                ));
            }
        }
        for a in self.alerts() {
            lines.push(format!("alert: {}: {}", a.key, a.message));
        }
        if lines.is_empty() {
            (true, "ok\n".into())
        } else {
            (false, lines.join("\n") + "\n")
        }
    }
}

/// Posts an alert to Slack in the background (a failure is logged; nothing waits for it).
fn send_to_slack(notify: &NotifyConfig, message: &str) {
    let url = match slack::webhook_url(notify) {
        Ok(Some(u)) => u,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "cannot send the alert to Slack");
            return;
        }
    };
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let cfg = notify.clone();
    let payload = serde_json::json!({
        "text": format!(":rotating_light: *sdci alert*: {}", slack::slack_escape(message))
    });
    rt.spawn(async move {
        if let Err(e) = slack::post(&cfg, &url, &payload).await {
            tracing::error!(error = %e, "giving up sending an alert to Slack");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_is_raised_once_and_keeps_healthz_not_ok_until_cleared() {
        let h = Health::default();
        h.set_vsphere(true, "");
        assert_eq!(h.report(), (true, "ok\n".into()));
        let (notify, metrics) = (NotifyConfig::default(), Metrics::default());
        assert!(h.alert(
            &notify,
            &metrics,
            "config:[dom0] password_file",
            "wrong password"
        ));
        assert!(!h.alert(&notify, &metrics, "config:[dom0] password_file", "again"));
        assert_eq!(metrics.counters()["alerts_raised"], 1);
        let (ok, text) = h.report();
        assert!(!ok && text.contains("[dom0] password_file"), "{text}");
        h.clear_alert("config:[dom0] password_file");
        assert!(h.report().0);
    }

    #[test]
    fn a_dependency_that_is_down_names_itself() {
        let h = Health::default();
        h.set_vsphere(false, "connection refused");
        let (ok, text) = h.report();
        assert!(!ok);
        assert!(text.contains("degraded: vsphere unavailable"), "{text}");
        assert!(text.contains("connection refused"), "{text}");
    }
}
