//! The SOAP session: one HTTPS endpoint, the `vmware_soap_session` cookie, login, re-login after
//! the session expired, and the call primitive every other module uses.
//!
//! Invariants:
//! - Every call carries the current session cookie; `NotAuthenticated` triggers exactly one
//!   re-login (shared by concurrent callers through a generation counter) and one replay. The
//!   server did not run the refused call, so replaying a mutating call is safe.
//! - Only calls marked [`Idem::Safe`] (reads, waits) are retried after a transport error or a
//!   5xx answer, at most [`READ_ATTEMPTS`] times with a short backoff; a mutating call that might
//!   have run is never sent twice: its error goes to the caller, classified `RetryLater`.
//! - Passwords are only ever written into request bodies, which are never logged.

use crate::config::{Timeouts, VsphereConfig};
use crate::hypervisor::{Result, VsphereError};
use crate::soap::{self, el, Answer, Moref};
use crate::tls;
use crate::xmltree::Element;
use sdci_protocol::job::Secret;
use std::time::Duration;
use tokio::sync::{Mutex, RwLock};

/// Cookie that carries the session (govmomi `SessionCookieName`).
pub const SESSION_COOKIE: &str = "vmware_soap_session";
/// Attempts for a call that is safe to repeat.
pub const READ_ATTEMPTS: u32 = 3;
const BOOTSTRAP_VERSION: &str = "6.5";

/// Whether a call may be sent again after a failure whose effect is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idem {
    /// Reads and waits: repeating them changes nothing.
    Safe,
    /// Changes state: sent at most once (except after `NotAuthenticated`).
    Once,
}

/// The parts of `ServiceContent` the client uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceContent {
    pub root_folder: Moref,
    pub property_collector: Moref,
    pub view_manager: Moref,
    pub session_manager: Moref,
    pub guest_operations_manager: Option<Moref>,
    /// `HostAgent` (ESXi) or `VirtualCenter`.
    pub api_type: String,
    pub api_version: String,
}

impl ServiceContent {
    pub fn from_response(resp: &Element) -> std::result::Result<Self, String> {
        let rv = resp.child("returnval").ok_or("no returnval")?;
        let m = |name: &str| -> std::result::Result<Moref, String> {
            rv.child(name)
                .and_then(Moref::from_element)
                .ok_or_else(|| format!("ServiceContent has no {name}"))
        };
        Ok(Self {
            root_folder: m("rootFolder")?,
            property_collector: m("propertyCollector")?,
            view_manager: m("viewManager")?,
            session_manager: m("sessionManager")?,
            guest_operations_manager: rv
                .child("guestOperationsManager")
                .and_then(Moref::from_element),
            api_type: rv.text_at("about/apiType").unwrap_or("").to_string(),
            api_version: rv
                .text_at("about/apiVersion")
                .filter(|v| !v.is_empty())
                .unwrap_or(BOOTSTRAP_VERSION)
                .to_string(),
        })
    }

    pub fn is_vcenter(&self) -> bool {
        self.api_type == "VirtualCenter"
    }
}

#[derive(Debug, Default)]
struct Auth {
    cookie: Option<String>,
    /// Bumped on every successful login.
    generation: u64,
}

/// One logged-in connection to vSphere.
pub struct Session {
    http: reqwest::Client,
    url: String,
    /// `host:port` the client connects to (replaces `*` in guestFile URLs).
    authority: String,
    scheme: String,
    user: String,
    password: Secret,
    pub timeouts: Timeouts,
    auth: RwLock<Auth>,
    login_lock: Mutex<()>,
    content: ServiceContent,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("url", &self.url)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Extracts `name=value` of the session cookie from a `Set-Cookie` header value.
pub fn session_cookie_from_header(value: &str) -> Option<String> {
    let pair = value.split(';').next()?.trim();
    let (name, _) = pair.split_once('=')?;
    (name.trim() == SESSION_COOKIE).then(|| pair.to_string())
}

/// Arguments of `Login`.
pub fn login_args(user: &str, password: &Secret) -> String {
    format!(
        "{}{}",
        el("userName", user),
        el("password", password.expose())
    )
}

/// vcsim (and the PropertyCollector generally) reports an expired session on a read as a
/// `NotAuthenticated` fault inside `missingSet`, not as a SOAP fault.
pub fn hides_not_authenticated(resp: &Element) -> bool {
    let Some(rv) = resp.child("returnval") else {
        return false;
    };
    let objects = rv
        .children_named("objects")
        .chain(resp.children_named("returnval"));
    objects
        .flat_map(|o| o.children_named("missingSet"))
        .any(|m| {
            m.path("fault/fault").and_then(|f| f.xsi_type.as_deref()) == Some("NotAuthenticated")
        })
}

fn config_error(url: &str, message: String) -> VsphereError {
    VsphereError::Config {
        message: format!("{url}: {message}"),
    }
}

/// Builds the HTTP client for a configuration (shared by SOAP calls and file transfers).
fn http_client(cfg: &VsphereConfig) -> Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .connect_timeout(cfg.timeouts.connect())
        .user_agent(concat!("sdci-vsphere/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(50));
    let builder = match tls::client_config(&cfg.tls) {
        Ok(Some(tls)) => builder.use_preconfigured_tls(tls),
        Ok(None) => builder,
        Err(e) => {
            return Err(config_error(
                &cfg.url,
                format!("TLS configuration: {}", e.0),
            ))
        }
    };
    builder
        .build()
        .map_err(|e| config_error(&cfg.url, format!("cannot build the HTTP client: {e}")))
}

impl Session {
    /// Connects, reads the service content and logs in.
    pub async fn connect(cfg: &VsphereConfig) -> Result<Self> {
        let mut parsed = reqwest::Url::parse(&cfg.url).map_err(|e| {
            config_error(
                &cfg.url,
                format!("not a URL ({e}); expected https://HOST[:PORT]/sdk"),
            )
        })?;
        let host = parsed.host_str().unwrap_or("").to_string();
        let loopback = matches!(host.as_str(), "localhost" | "[::1]") || host.starts_with("127.");
        match parsed.scheme() {
            "https" => {}
            "http" if loopback => {
                tracing::warn!(url = %cfg.url, "plain http to a loopback vSphere endpoint")
            }
            other => {
                return Err(config_error(
                    &cfg.url,
                    format!("scheme {other:?} refused: use https (http only on loopback)"),
                ))
            }
        }
        if matches!(parsed.path(), "" | "/") {
            // `https://esxi` means its SDK endpoint.
            parsed.set_path("/sdk");
        }
        let port = parsed.port_or_known_default().unwrap_or(443);
        let http = http_client(cfg)?;
        let mut session = Self {
            http,
            url: parsed.to_string(),
            authority: format!("{host}:{port}"),
            scheme: parsed.scheme().to_string(),
            user: cfg.user.clone(),
            password: cfg.password.clone(),
            timeouts: cfg.timeouts.clone(),
            auth: RwLock::new(Auth::default()),
            login_lock: Mutex::new(()),
            content: ServiceContent {
                root_folder: Moref::new("Folder", ""),
                property_collector: Moref::new("PropertyCollector", ""),
                view_manager: Moref::new("ViewManager", ""),
                session_manager: Moref::new("SessionManager", ""),
                guest_operations_manager: None,
                api_type: String::new(),
                api_version: BOOTSTRAP_VERSION.into(),
            },
        };
        let si = Moref::new("ServiceInstance", "ServiceInstance");
        let resp = session
            .call("RetrieveServiceContent", &si, "", Idem::Safe)
            .await?;
        session.content =
            ServiceContent::from_response(&resp).map_err(|message| VsphereError::Protocol {
                method: "RetrieveServiceContent".into(),
                message,
            })?;
        tracing::info!(
            url = %session.url,
            api_type = %session.content.api_type,
            api_version = %session.content.api_version,
            "connected to vSphere"
        );
        session.login(0).await?;
        Ok(session)
    }

    pub fn content(&self) -> &ServiceContent {
        &self.content
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `scheme://host:port` of the endpoint.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }

    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The current session cookie (`name=value`), for guestFile transfers.
    pub async fn cookie(&self) -> Option<String> {
        self.auth.read().await.cookie.clone()
    }

    /// Logs in unless someone else already did after generation `seen`.
    async fn login(&self, seen: u64) -> Result<()> {
        let _guard = self.login_lock.lock().await;
        if self.auth.read().await.generation != seen {
            return Ok(());
        }
        let args = login_args(&self.user, &self.password);
        let sm = self.content.session_manager.clone();
        let (answer, cookie) = self
            .send("Login", &sm, &args, None, self.timeouts.call())
            .await?;
        match answer {
            Answer::Response(_) => {}
            Answer::Fault(f) if f.kind == "InvalidLogin" => {
                return Err(VsphereError::LoginRefused {
                    user: self.user.clone(),
                })
            }
            Answer::Fault(f) => {
                return Err(VsphereError::Fault {
                    method: "Login".into(),
                    kind: f.kind,
                    message: f.message,
                })
            }
        }
        let cookie = cookie.ok_or_else(|| VsphereError::Protocol {
            method: "Login".into(),
            message: format!("the answer set no {SESSION_COOKIE} cookie"),
        })?;
        let mut auth = self.auth.write().await;
        auth.cookie = Some(cookie);
        auth.generation += 1;
        tracing::info!(user = %self.user, generation = auth.generation, "logged in to vSphere");
        Ok(())
    }

    /// Ends the session on the server. A later call logs in again.
    pub async fn logout(&self) -> Result<()> {
        let sm = self.content.session_manager.clone();
        self.call("Logout", &sm, "", Idem::Once).await.map(|_| ())
    }

    /// One HTTP exchange: the answer (response or fault) and a session cookie if one was set.
    async fn send(
        &self,
        method: &str,
        this: &Moref,
        args: &str,
        cookie: Option<&str>,
        timeout: Duration,
    ) -> Result<(Answer, Option<String>)> {
        let body = soap::envelope(method, this, args);
        let mut req = self
            .http
            .post(&self.url)
            .timeout(timeout)
            .header("Content-Type", "text/xml; charset=utf-8")
            .header(
                "SOAPAction",
                format!("\"urn:vim25/{}\"", self.content.api_version),
            )
            .body(body);
        if let Some(c) = cookie {
            req = req.header("Cookie", c);
        }
        tracing::debug!(method, this = %this, "vSphere call");
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport(method, &e, timeout))?;
        let status = resp.status();
        let set_cookie = resp
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(session_cookie_from_header);
        let text = resp
            .text()
            .await
            .map_err(|e| self.transport(method, &e, timeout))?;
        if status.is_success() || status.as_u16() == 500 {
            match soap::parse_answer(&text) {
                Ok(a) => return Ok((a, set_cookie)),
                Err(e) if status.is_success() => {
                    return Err(VsphereError::Protocol {
                        method: method.into(),
                        message: e.0,
                    })
                }
                Err(_) => {}
            }
        }
        Err(VsphereError::Http {
            method: method.into(),
            status: status.as_u16(),
        })
    }

    fn transport(&self, method: &str, e: &reqwest::Error, timeout: Duration) -> VsphereError {
        let mut message = if e.is_timeout() {
            format!("{method}: no answer within {timeout:?}")
        } else {
            format!("{method}: {e}")
        };
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        VsphereError::Transport {
            url: self.url.clone(),
            message,
        }
    }

    /// Calls `method` with the ordinary call timeout.
    pub async fn call(
        &self,
        method: &str,
        this: &Moref,
        args: &str,
        idem: Idem,
    ) -> Result<Element> {
        self.call_with_timeout(method, this, args, idem, self.timeouts.call())
            .await
    }

    /// Calls `method` and returns its response element, or the fault as
    /// [`VsphereError::Fault`]. Handles re-login and the retries described in the module doc.
    pub async fn call_with_timeout(
        &self,
        method: &str,
        this: &Moref,
        args: &str,
        idem: Idem,
        timeout: Duration,
    ) -> Result<Element> {
        let mut attempt = 0u32;
        let mut relogged = false;
        loop {
            attempt += 1;
            let (cookie, generation) = {
                let a = self.auth.read().await;
                (a.cookie.clone(), a.generation)
            };
            let outcome = self
                .send(method, this, args, cookie.as_deref(), timeout)
                .await;
            let outcome = match outcome {
                Ok((Answer::Response(r), c)) if hides_not_authenticated(&r) => Ok((
                    Answer::Fault(soap::Fault {
                        kind: "NotAuthenticated".into(),
                        message: "the session is not authenticated".into(),
                        detail: None,
                    }),
                    c,
                )),
                other => other,
            };
            let err = match outcome {
                Ok((Answer::Response(r), _)) => return Ok(r),
                Ok((Answer::Fault(f), _)) if f.kind == "NotAuthenticated" && !relogged => {
                    tracing::info!(method, "vSphere session expired; logging in again");
                    relogged = true;
                    self.login(generation).await?;
                    attempt -= 1;
                    continue;
                }
                Ok((Answer::Fault(f), _)) => {
                    return Err(VsphereError::Fault {
                        method: method.into(),
                        kind: f.kind,
                        message: f.message,
                    })
                }
                Err(e) => e,
            };
            let retryable = matches!(
                &err,
                VsphereError::Transport { .. } | VsphereError::Http { status: 500.., .. }
            );
            if idem == Idem::Safe && retryable && attempt < READ_ATTEMPTS {
                let backoff = Duration::from_millis(100 * 4u64.pow(attempt - 1));
                tracing::warn!(method, attempt, error = %err, ?backoff, "retrying a read");
                tokio::time::sleep(backoff).await;
                continue;
            }
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_session_cookie_is_taken_from_set_cookie() {
        assert_eq!(
            session_cookie_from_header("vmware_soap_session=\"abc\"; Path=/; HttpOnly; Secure;"),
            Some("vmware_soap_session=\"abc\"".to_string())
        );
        assert_eq!(session_cookie_from_header("other=1; Path=/"), None);
        assert_eq!(session_cookie_from_header("garbage"), None);
    }
}
