package main

// faults.go is the HTTP middleware in front of vcsim: fault and delay injection by SOAP method
// (rules set over the control API, each with a count), and ESXi's asynchronous ShutdownGuest
// (acknowledged at once; the guest powers off after the VM's shutdown delay; needs Tools).
//
// It also gives ReconfigVM_Task ESXi's compare-and-set: a spec whose changeVersion is not the
// VM's current config.changeVersion fails with ConcurrentAccess, every applied change gets a
// new changeVersion, and an annotation set to "" clears it (vcsim ignores empty strings).
//
// A rule matches the SOAP body element name (e.g. "PowerOnVM_Task"), "*" for any SOAP call, or
// "guestFile" for the /guestFile PUT/GET. An optional vm restricts it to calls whose vm
// argument (or _this) is that VM. Rules fire in the order they were added; count 0 means
// "until cleared".

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

type rule struct {
	ID      int64  `json:"id"`
	Method  string `json:"method"`
	Action  string `json:"action"`
	Fault   string `json:"fault,omitempty"`
	Message string `json:"message,omitempty"`
	Status  int    `json:"status,omitempty"`
	Ms      int64  `json:"ms,omitempty"`
	Count   int64  `json:"count"`
	VM      string `json:"vm,omitempty"`
	Fired   int64  `json:"fired"`
}

var actions = map[string]bool{
	"soapfault": true, "http": true, "drop": true, "delay": true,
	"taskerror": true, "taskrunning": true, "shutdownnever": true,
}

func (r *rule) validate() error {
	if r.Method == "" {
		return fmt.Errorf("method is required (a SOAP method such as PowerOnVM_Task, \"*\", or \"guestFile\")")
	}
	if !actions[r.Action] {
		return fmt.Errorf("unknown action %q (one of soapfault, http, drop, delay, taskerror, taskrunning, shutdownnever)", r.Action)
	}
	if r.Count < 0 || r.Ms < 0 {
		return fmt.Errorf("count and ms must not be negative")
	}
	switch r.Action {
	case "soapfault", "taskerror":
		if _, err := newFault(r.Fault); err != nil {
			return err
		}
	case "http":
		if r.Status < 100 || r.Status > 599 {
			return fmt.Errorf("status must be an HTTP status code, not %d", r.Status)
		}
	}
	if (r.Action == "taskerror" || r.Action == "taskrunning") && !strings.HasSuffix(r.Method, "_Task") {
		return fmt.Errorf("action %s needs a method that returns a Task (name ending in _Task), not %q", r.Action, r.Method)
	}
	if r.Action == "shutdownnever" && r.Method != "ShutdownGuest" {
		return fmt.Errorf("action shutdownnever applies to method ShutdownGuest only")
	}
	if r.Method == "guestFile" && r.Action != "http" && r.Action != "drop" && r.Action != "delay" {
		return fmt.Errorf("method guestFile supports actions http, drop and delay only")
	}
	return nil
}

// newFault makes a zero value of the named vim25 fault type.
func newFault(kind string) (types.BaseMethodFault, error) {
	t, ok := types.TypeFunc()(kind)
	if !ok {
		return nil, fmt.Errorf("unknown fault type %q (use a vim25 type name such as InvalidPowerState)", kind)
	}
	f, ok := reflect.New(t).Interface().(types.BaseMethodFault)
	if !ok {
		return nil, fmt.Errorf("%q is not a vim25 MethodFault type", kind)
	}
	return f, nil
}

// match returns the first live rule for the call and uses up one of its count.
func (w *World) match(method, vm string) *rule {
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, r := range w.rules {
		if r.Method != method && !(r.Method == "*" && method != "guestFile") {
			continue
		}
		if r.VM != "" && r.VM != vm {
			continue
		}
		r.Fired++
		if r.Count > 0 && r.Fired >= r.Count {
			w.rules = append(w.rules[:i:i], w.rules[i+1:]...)
		}
		copy := *r
		return &copy
	}
	return nil
}

func typeFunc(name string) (reflect.Type, bool) {
	if t, ok := types.TypeFunc()(name); ok {
		return t, ok
	}
	if i := strings.IndexByte(name, ':'); i >= 0 {
		return types.TypeFunc()(name[i+1:])
	}
	return nil, false
}

// callVM names the VM a SOAP call is about: its vm argument, else _this (a snapshot's VM).
func callVM(m *simulator.Method) (types.ManagedObjectReference, string) {
	ref := m.This
	if v := reflect.ValueOf(m.Body); v.Kind() == reflect.Ptr {
		if f := v.Elem().FieldByName("Vm"); f.IsValid() {
			if r, ok := f.Interface().(types.ManagedObjectReference); ok {
				ref = r
			}
		}
	}
	if ss, ok := simulator.Map.Get(ref).(*simulator.VirtualMachineSnapshot); ok {
		ref = ss.Vm
	}
	name := ""
	if e, ok := simulator.Map.Get(ref).(mo.Entity); ok {
		name = e.Entity().Name
	}
	return ref, name
}

func (w *World) middleware(inner http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/guestFile" {
			if rl := w.match("guestFile", ""); rl != nil && w.applyTransport(rw, rl) {
				return
			}
			inner.ServeHTTP(rw, r)
			return
		}
		if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, "/sdk") {
			inner.ServeHTTP(rw, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		_ = r.Body.Close()
		if err != nil {
			http.Error(rw, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		method, err := simulator.UnmarshalBody(typeFunc, body)
		if err != nil {
			inner.ServeHTTP(rw, r)
			return
		}
		_, vmName := callVM(method)
		never := false
		if rl := w.match(method.Name, vmName); rl != nil {
			switch rl.Action {
			case "soapfault":
				msg := rl.Message
				if msg == "" {
					msg = "injected fault " + rl.Fault
				}
				writeFault(rw, rl.Fault, msg, "")
				return
			case "taskerror", "taskrunning":
				w.injectTask(rw, r, method, body, rl)
				return
			case "shutdownnever":
				never = true
			default:
				if w.applyTransport(rw, rl) {
					return
				}
			}
		}
		if method.Name == "ShutdownGuest" {
			if w.shutdownGuest(rw, r, method, never) {
				return
			}
		}
		if method.Name == "CreateSnapshot_Task" {
			noteSnapshotRequest(method, vmName) // stages.go
		}
		if method.Name == "AcquireTicket" && w.acquireTicket(rw, r, method) {
			return
		}
		if method.Name == "ReconfigVM_Task" {
			if w.reconfigVM(rw, r, method, body) {
				return
			}
		}
		if method.Name == "CloneVM_Task" && w.cloneVM(rw, r, method, body) {
			return // clones.go
		}
		if method.Name == "CreateScreenshot_Task" {
			if w.createScreenshot(rw, method) {
				return
			}
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		inner.ServeHTTP(rw, r)
	})
}

// applyTransport applies http/drop/delay rules; true when the request was answered.
func (w *World) applyTransport(rw http.ResponseWriter, rl *rule) bool {
	switch rl.Action {
	case "http":
		msg := rl.Message
		if msg == "" {
			msg = http.StatusText(rl.Status)
		}
		http.Error(rw, msg, rl.Status)
		return true
	case "drop":
		if hj, ok := rw.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				_ = conn.Close()
				return true
			}
		}
		panic(http.ErrAbortHandler)
	case "delay":
		time.Sleep(time.Duration(rl.Ms) * time.Millisecond)
	}
	return false
}

const envelopeStart = `<?xml version="1.0" encoding="UTF-8"?>` + "\n" +
	`<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>`
const envelopeEnd = `</soapenv:Body></soapenv:Envelope>`

func xmlEscape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// writeFault answers with a typed SOAP fault as ESXi does (HTTP 500, detail/<Kind>Fault).
func writeFault(rw http.ResponseWriter, kind, msg, fields string) {
	rw.Header().Set("Content-Type", "text/xml; charset=utf-8")
	rw.WriteHeader(http.StatusInternalServerError)
	fmt.Fprintf(rw, `%s<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring><detail><%sFault xmlns="urn:vim25" xsi:type="%s">%s</%sFault></detail></soapenv:Fault>%s`,
		envelopeStart, xmlEscape(msg), kind, kind, fields, kind, envelopeEnd)
}

func writeResponse(rw http.ResponseWriter, method, inner string) {
	rw.Header().Set("Content-Type", "text/xml; charset=utf-8")
	rw.WriteHeader(http.StatusOK)
	fmt.Fprintf(rw, `%s<%sResponse xmlns="urn:vim25">%s</%sResponse>%s`, envelopeStart, method, inner, method, envelopeEnd)
}

const probeBody = `<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></CurrentTime></soapenv:Body></soapenv:Envelope>`

// replay runs a SOAP body through vcsim with the caller's headers (session cookie).
func (w *World) replay(r *http.Request, body string) *httptest.ResponseRecorder {
	req := r.Clone(context.Background())
	req.Body = io.NopCloser(strings.NewReader(body))
	req.ContentLength = int64(len(body))
	rec := httptest.NewRecorder()
	w.inner.ServeHTTP(rec, req)
	return rec
}

func copyRecorded(rw http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		rw.Header()[k] = v
	}
	rw.WriteHeader(rec.Code)
	_, _ = rw.Write(rec.Body.Bytes())
}

// shutdownGuest implements ESXi's ShutdownGuest for our VMs; false = let vcsim answer.
func (w *World) shutdownGuest(rw http.ResponseWriter, r *http.Request, m *simulator.Method, never bool) bool {
	st := w.vmByRef(m.This)
	if st == nil {
		return false
	}
	if rec := w.replay(r, probeBody); rec.Code != http.StatusOK {
		copyRecorded(rw, rec) // NotAuthenticated, as vcsim answers without a session
		return true
	}
	ps := powerState(st.ref)
	if ps != types.VirtualMachinePowerStatePoweredOn {
		writeFault(rw, "InvalidPowerState", "The attempted operation cannot be performed in the current state (Powered off).",
			fmt.Sprintf("<requestedState>poweredOn</requestedState><existingState>%s</existingState>", ps))
		return true
	}
	w.mu.Lock()
	tools, gen, delay := st.toolsRunning, st.generation, st.shutdownDelay
	w.mu.Unlock()
	if !tools {
		writeFault(rw, "ToolsUnavailable", "Cannot complete operation because VMware Tools is not running in this virtual machine.", "")
		return true
	}
	writeResponse(rw, "ShutdownGuest", "")
	if never {
		log.Printf("ShutdownGuest %s: acknowledged, never happens (injected)", st.name)
		return true
	}
	time.AfterFunc(delay, func() {
		w.mu.Lock()
		current := st.generation == gen
		w.mu.Unlock()
		if current {
			w.powerOffNow(st.ref)
		}
	})
	return true
}

var (
	taskRefRe  = regexp.MustCompile(`<returnval type="Task">([^<]+)</returnval>`)
	faultStrRe = regexp.MustCompile(`(?s)<faultstring>(.*?)</faultstring>`)
	faultKind  = regexp.MustCompile(`xsi:type="([A-Za-z0-9]+)"`)
)

// injectTask answers a *_Task call with a Task that fails (taskerror) or stays running for
// rl.Ms and then ends as the real call ends (taskrunning; the real call runs at that time).
func (w *World) injectTask(rw http.ResponseWriter, r *http.Request, m *simulator.Method, body []byte, rl *rule) {
	if rec := w.replay(r, probeBody); rec.Code != http.StatusOK {
		copyRecorded(rw, rec)
		return
	}
	if simulator.Map.Get(m.This) == nil {
		writeFault(rw, "ManagedObjectNotFound", fmt.Sprintf("managed object not found: %s", m.This),
			fmt.Sprintf(`<obj type="%s">%s</obj>`, m.This.Type, m.This.Value))
		return
	}
	root := strings.TrimSuffix(m.Name, "_Task")
	task := simulator.CreateTask(m.This, root+"Task", nil)
	for id, name := range wsdlTaskNames {
		if name == m.Name {
			task.Info.DescriptionId = m.This.Type + "." + id
		}
	}
	start := func() {
		simulator.Map.WithLock(task, func() {
			simulator.Map.Update(task, []types.PropertyChange{
				{Name: "info.startTime", Val: time.Now()},
				{Name: "info.state", Val: types.TaskInfoStateRunning},
			})
		})
	}
	finish := func(res types.AnyType, f types.BaseMethodFault, msg string) {
		state := types.TaskInfoStateSuccess
		var fv interface{}
		if f != nil {
			state = types.TaskInfoStateError
			fv = types.LocalizedMethodFault{Fault: f, LocalizedMessage: msg}
		}
		simulator.Map.WithLock(task, func() {
			simulator.Map.Update(task, []types.PropertyChange{
				{Name: "info.completeTime", Val: time.Now()},
				{Name: "info.state", Val: state},
				{Name: "info.result", Val: res},
				{Name: "info.error", Val: fv},
			})
		})
	}
	start()
	if rl.Action == "taskerror" && rl.Ms == 0 {
		f, _ := newFault(rl.Fault)
		finish(nil, fillFault(f, m), faultMessage(rl))
	}
	writeResponse(rw, m.Name, fmt.Sprintf(`<returnval type="Task">%s</returnval>`, task.Self.Value))
	if rl.Action == "taskerror" && rl.Ms == 0 {
		return
	}
	go func() {
		time.Sleep(time.Duration(rl.Ms) * time.Millisecond)
		if rl.Action == "taskerror" {
			f, _ := newFault(rl.Fault)
			finish(nil, fillFault(f, m), faultMessage(rl))
			return
		}
		rec := w.replay(r, string(body))
		out := rec.Body.String()
		if rec.Code != http.StatusOK {
			kind, msg := "SystemError", out
			if k := faultKind.FindStringSubmatch(out); k != nil {
				kind = k[1]
			}
			if s := faultStrRe.FindStringSubmatch(out); s != nil {
				msg = s[1]
			}
			f, err := newFault(kind)
			if err != nil {
				f = &types.SystemError{Reason: msg}
			}
			finish(nil, f, msg)
			return
		}
		sm := taskRefRe.FindStringSubmatch(out)
		if sm == nil {
			finish(nil, nil, "")
			return
		}
		real, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "Task", Value: sm[1]}).(*simulator.Task)
		if !ok {
			finish(nil, nil, "")
			return
		}
		var info types.TaskInfo
		simulator.Map.WithLock(real, func() { info = real.Info })
		if info.Error != nil {
			finish(nil, info.Error.Fault, info.Error.LocalizedMessage)
		} else {
			finish(info.Result, nil, "")
		}
	}()
}

func faultMessage(rl *rule) string {
	if rl.Message != "" {
		return rl.Message
	}
	return "injected fault " + rl.Fault
}

// fillFault sets the required fields of well-known faults so clients can decode them.
func fillFault(f types.BaseMethodFault, m *simulator.Method) types.BaseMethodFault {
	if ips, ok := f.(*types.InvalidPowerState); ok {
		ref, _ := callVM(m)
		ips.ExistingState = powerState(ref)
		if ips.ExistingState == "" {
			ips.ExistingState = types.VirtualMachinePowerStatePoweredOff
		}
	}
	return f
}

var annotationRe = regexp.MustCompile(`<(?:[A-Za-z0-9_]+:)?annotation[\s/>]`)

// reconfigVM runs ReconfigVM_Task on one of our VMs with ESXi's changeVersion check (false =
// let vcsim answer alone).
func (w *World) reconfigVM(rw http.ResponseWriter, r *http.Request, m *simulator.Method, body []byte) bool {
	st := w.vmByRef(m.This)
	req, ok := m.Body.(*types.ReconfigVM_Task)
	if st == nil || !ok {
		return false
	}
	if rec := w.replay(r, probeBody); rec.Code != http.StatusOK {
		copyRecorded(rw, rec)
		return true
	}
	vm := simVM(st.ref)
	if vm == nil {
		return false
	}
	w.reconfigMu.Lock()
	defer w.reconfigMu.Unlock()
	var current string
	simulator.Map.WithLock(vm, func() { current = vm.Config.ChangeVersion })
	if req.Spec.ChangeVersion != "" && req.Spec.ChangeVersion != current {
		w.failedTask(rw, m, &types.ConcurrentAccess{},
			"Cannot complete operation due to concurrent modification by another operation.")
		return true
	}
	rec := w.replay(r, string(body))
	if rec.Code == http.StatusOK {
		changes := []types.PropertyChange{{Name: "config.changeVersion", Val: nextChangeVersion()}}
		if annotationRe.Match(body) {
			changes = append(changes,
				types.PropertyChange{Name: "config.annotation", Val: req.Spec.Annotation},
				types.PropertyChange{Name: "summary.config.annotation", Val: req.Spec.Annotation})
		}
		simulator.Map.WithLock(vm, func() { simulator.Map.Update(vm, changes) })
	}
	copyRecorded(rw, rec)
	return true
}

// failedTask answers a *_Task call with a Task that has already failed with f.
func (w *World) failedTask(rw http.ResponseWriter, m *simulator.Method, f types.BaseMethodFault, msg string) {
	root := strings.TrimSuffix(m.Name, "_Task")
	task := simulator.CreateTask(m.This, root+"Task", nil)
	for id, name := range wsdlTaskNames {
		if name == m.Name {
			task.Info.DescriptionId = m.This.Type + "." + id
		}
	}
	simulator.Map.WithLock(task, func() {
		simulator.Map.Update(task, []types.PropertyChange{
			{Name: "info.startTime", Val: time.Now()},
			{Name: "info.completeTime", Val: time.Now()},
			{Name: "info.state", Val: types.TaskInfoStateError},
			{Name: "info.error", Val: types.LocalizedMethodFault{Fault: f, LocalizedMessage: msg}},
		})
	})
	writeResponse(rw, m.Name, fmt.Sprintf(`<returnval type="Task">%s</returnval>`, task.Self.Value))
}
