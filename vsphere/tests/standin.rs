//! What the govmomi simulator (vcsim 0.24.2) cannot show, against a small loopback vim25
//! stand-in that answers with documented shapes: vCenter's paged `RetrievePropertiesEx`
//! (a `token`, then `ContinueRetrievePropertiesEx`), a VM question pending while a task runs or
//! while Tools are awaited, and an expired session reported as a SOAP `NotAuthenticated` fault
//! (what ESXi and vCenter send; vcsim hides it in `missingSet`).
#![allow(clippy::unwrap_used)]

use sdci_protocol::job::Secret;
use sdci_vsphere::xmltree;
use sdci_vsphere::{
    ErrorClass, Hypervisor, Timeouts, TlsPolicy, VsphereClient, VsphereConfig, VsphereError,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const NS: &str = r#"xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance""#;

fn ok(method: &str, inner: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope {NS}><soapenv:Body><{method}Response xmlns="urn:vim25">{inner}</{method}Response></soapenv:Body></soapenv:Envelope>"#
    )
}

fn fault(kind: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope {NS}><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>{kind}</faultstring><detail><{kind}Fault xmlns="urn:vim25" xsi:type="{kind}"></{kind}Fault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#
    )
}

fn vm_object(id: &str, name: &str) -> String {
    format!(
        concat!(
            r#"<objects><obj type="VirtualMachine">{id}</obj>"#,
            r#"<propSet><name>name</name><val xsi:type="xsd:string">{name}</val></propSet>"#,
            r#"<propSet><name>runtime.powerState</name><val xsi:type="VirtualMachinePowerState">poweredOff</val></propSet>"#,
            r#"</objects>"#
        ),
        id = id,
        name = name
    )
}

const QUESTION: &str = concat!(
    r#"<changeSet><name>runtime.question</name><op>assign</op><val xsi:type="VirtualMachineQuestionInfo">"#,
    r#"<id>1</id><text>This virtual machine might have been moved or copied.</text>"#,
    r#"<choice><choiceInfo><key>0</key><label>Cancel</label><summary>Cancel</summary></choiceInfo></choice>"#,
    r#"</val></changeSet>"#
);

/// What the stand-in saw, and how it should behave.
#[derive(Default)]
struct State {
    calls: Vec<String>,
    logins: usize,
    /// Answer the next authenticated call with `NotAuthenticated`.
    expire_next: bool,
    /// The server forgets the first property collector (as after a re-login); waits on later
    /// ones see the task succeed.
    lose_first_collector: bool,
    collectors: usize,
    /// Told about every `CurrentTime` call (the keep-alive).
    current_time: Option<tokio::sync::mpsc::UnboundedSender<()>>,
}

fn service_content() -> String {
    let capture = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/wire/RetrieveServiceContent.xml"
    ))
    .unwrap();
    capture
        .split_once("RESPONSE:\n")
        .unwrap()
        .1
        .trim()
        .to_string()
}

/// The answer to one call, and a cookie to set.
fn answer(
    state: &Mutex<State>,
    method: &str,
    body: &xmltree::Element,
) -> (String, Option<&'static str>) {
    let mut st = state.lock().unwrap();
    st.calls.push(method.to_string());
    if method != "RetrieveServiceContent" && method != "Login" && st.expire_next {
        st.expire_next = false;
        return (fault("NotAuthenticated"), None);
    }
    let text = match method {
        "RetrieveServiceContent" => service_content(),
        "Login" => {
            st.logins += 1;
            return (
                ok("Login", "<returnval><key>k</key><userName>u</userName></returnval>"),
                Some("vmware_soap_session=\"s1\"; Path=/; HttpOnly; Secure;"),
            );
        }
        "CurrentTime" => {
            if let Some(tx) = &st.current_time {
                let _ = tx.send(());
            }
            ok(method, "<returnval>2026-11-28T17:00:00Z</returnval>")
        }
        "CreateContainerView" => ok(method, r#"<returnval type="ContainerView">view-1</returnval>"#),
        "RetrievePropertiesEx" => ok(
            method,
            &format!("<returnval><token>page-2</token>{}</returnval>", vm_object("vm-1", "Qubes_4.2_a")),
        ),
        "ContinueRetrievePropertiesEx" => {
            assert_eq!(body.text_at("token"), Some("page-2"));
            ok(method, &format!("<returnval>{}</returnval>", vm_object("vm-2", "Qubes_4.2_b")))
        }
        "PowerOnVM_Task" => ok(method, r#"<returnval type="Task">task-1</returnval>"#),
        "CreatePropertyCollector" => {
            st.collectors += 1;
            ok(
                method,
                &format!(r#"<returnval type="PropertyCollector">pc-{}</returnval>"#, st.collectors),
            )
        }
        "WaitForUpdatesEx" if st.lose_first_collector => {
            if body.text_at("_this") == Some("pc-1") {
                return (fault("ManagedObjectNotFound"), None);
            }
            ok(
                method,
                concat!(
                    "<returnval><version>1</version><filterSet><filter type=\"PropertyFilter\">filter-1</filter>",
                    "<objectSet><kind>enter</kind><obj type=\"Task\">task-1</obj><changeSet><name>info</name><op>assign</op>",
                    "<val xsi:type=\"TaskInfo\"><key>task-1</key><state>success</state></val></changeSet></objectSet>",
                    "</filterSet></returnval>"
                ),
            )
        }
        "CreateFilter" => ok(method, r#"<returnval type="PropertyFilter">filter-1</returnval>"#),
        "WaitForUpdatesEx" => ok(
            method,
            &format!(
                concat!(
                    "<returnval><version>1</version><filterSet><filter type=\"PropertyFilter\">filter-1</filter>",
                    "<objectSet><kind>enter</kind><obj type=\"Task\">task-1</obj><changeSet><name>info</name><op>assign</op>",
                    "<val xsi:type=\"TaskInfo\"><key>task-1</key><state>running</state></val></changeSet></objectSet>",
                    "<objectSet><kind>enter</kind><obj type=\"VirtualMachine\">vm-1</obj>",
                    "<changeSet><name>runtime.powerState</name><op>assign</op><val xsi:type=\"VirtualMachinePowerState\">poweredOn</val></changeSet>",
                    "{q}</objectSet></filterSet></returnval>"
                ),
                q = QUESTION
            ),
        ),
        "DestroyView" | "DestroyPropertyCollector" | "Logout" => ok(method, ""),
        other => panic!("the stand-in does not answer {other}"),
    };
    (text, None)
}

/// Serves vim25 on a loopback port (plain http, allowed on loopback), one request per
/// connection.
async fn standin(state: Arc<Mutex<State>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            let state = state.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(sock);
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).await.unwrap();
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = l.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).await.unwrap();
                let doc = xmltree::parse(std::str::from_utf8(&body).unwrap()).unwrap();
                let call = doc.find("Body").unwrap().children[0].clone();
                let (text, cookie) = answer(&state, &call.name, &call);
                let status = if text.contains("soapenv:Fault") {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let cookie = cookie
                    .map(|c| format!("Set-Cookie: {c}\r\n"))
                    .unwrap_or_default();
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/xml; charset=utf-8\r\n{cookie}Content-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
                let mut sock = r.into_inner();
                sock.write_all(resp.as_bytes()).await.unwrap();
                sock.shutdown().await.unwrap();
            });
        }
    });
    format!("http://{addr}/sdk")
}

async fn client(state: &Arc<Mutex<State>>) -> VsphereClient {
    client_with(state, 0).await
}

async fn client_with(state: &Arc<Mutex<State>>, keepalive_secs: u64) -> VsphereClient {
    let url = standin(state.clone()).await;
    VsphereClient::connect(VsphereConfig {
        url,
        user: "u".into(),
        password: Secret::new("p"),
        tls: TlsPolicy::SystemRoots,
        datacenters: None,
        // A broken question check then fails within seconds instead of hanging.
        timeouts: Timeouts {
            task_secs: 20,
            keepalive_secs,
            ..Timeouts::default()
        },
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_paged_inventory_is_read_to_its_last_page() {
    let state = Arc::new(Mutex::new(State::default()));
    let c = client(&state).await;
    let names: Vec<String> = c
        .list_vms("Qubes_4.2_")
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["Qubes_4.2_a", "Qubes_4.2_b"]);
    let calls = state.lock().unwrap().calls.clone();
    assert!(
        calls.contains(&"ContinueRetrievePropertiesEx".to_string()),
        "{calls:?}"
    );
    assert_eq!(calls.last().map(String::as_str), Some("DestroyView"));
}

#[tokio::test]
async fn a_pending_question_ends_a_task_wait_instead_of_hanging() {
    let state = Arc::new(Mutex::new(State::default()));
    let c = client(&state).await;
    c.list_vms("Qubes_").await.unwrap();
    let e = c.power_on("Qubes_4.2_a").await.unwrap_err();
    match &e {
        VsphereError::VmQuestion { vm, question } => {
            assert_eq!(vm, "Qubes_4.2_a");
            assert_eq!(
                question,
                "This virtual machine might have been moved or copied."
            );
        }
        other => panic!("expected VmQuestion, got {other:?}"),
    }
    assert_eq!(e.class(), ErrorClass::RetryOtherVm);
    // The waiter's collector was cleaned up.
    assert!(state
        .lock()
        .unwrap()
        .calls
        .contains(&"DestroyPropertyCollector".to_string()));
    // Waiting for Tools reports the question too.
    let e = c
        .wait_guest_ready("Qubes_4.2_a", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(matches!(e, VsphereError::VmQuestion { .. }), "{e:?}");
}

#[tokio::test]
async fn a_not_authenticated_fault_logs_in_again_and_replays_the_call() {
    let state = Arc::new(Mutex::new(State::default()));
    let c = client(&state).await;
    assert_eq!(state.lock().unwrap().logins, 1);
    state.lock().unwrap().expire_next = true;
    assert_eq!(c.keep_alive().await.unwrap(), "2026-11-28T17:00:00Z");
    let st = state.lock().unwrap();
    assert_eq!(st.logins, 2);
    let tail: Vec<&str> = st
        .calls
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(tail, ["CurrentTime", "Login", "CurrentTime"]);
}

#[tokio::test]
async fn a_property_collector_the_server_lost_is_rebuilt_and_the_wait_goes_on() {
    let state = Arc::new(Mutex::new(State {
        lose_first_collector: true,
        ..State::default()
    }));
    let c = client(&state).await;
    c.list_vms("Qubes_").await.unwrap();
    c.power_on("Qubes_4.2_a").await.unwrap();
    let st = state.lock().unwrap();
    assert_eq!(st.collectors, 2);
    let powered_on = st.calls.iter().filter(|c| *c == "PowerOnVM_Task").count();
    assert_eq!(powered_on, 1, "the task is waited for, not started again");
    let filters = st.calls.iter().filter(|c| *c == "CreateFilter").count();
    assert_eq!(
        filters, 4,
        "both filters (task, question) on both collectors"
    );
}

#[tokio::test]
async fn the_keep_alive_calls_vsphere_on_its_own_while_the_client_lives() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let state = Arc::new(Mutex::new(State {
        current_time: Some(tx),
        ..State::default()
    }));
    let c = client_with(&state, 1).await;
    // Two beats, without any call from the test.
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("no keep-alive within the safety net")
            .unwrap();
    }
    drop(c);
}
