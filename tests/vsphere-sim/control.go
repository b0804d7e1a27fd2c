package main

// control.go is the test control API, served under /_sim/ on the vSphere port and on a
// separate plain-HTTP loopback port (so a harness needs no TLS client to steer an https sim):
//
//   POST   /_sim/faults        add one rule (JSON, see rule in faults.go) -> {"id": N}
//   GET    /_sim/faults        the live rules
//   DELETE /_sim/faults        remove every rule
//   POST   /_sim/vms/NAME      {"tools_delay_ms": N|null, "shutdown_delay_ms": N} (each optional)
//   GET    /_sim/vms           every VM: power state, Tools, root directory, guest processes
//
// Bad input gets 400 with a message saying what to send instead.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"
)

func (w *World) controlHandler() http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		p := strings.TrimPrefix(r.URL.Path, "/_sim")
		switch {
		case p == "/faults" && r.Method == http.MethodPost:
			w.addRule(rw, r)
		case p == "/faults" && r.Method == http.MethodGet:
			w.mu.Lock()
			rules := append([]*rule{}, w.rules...)
			w.mu.Unlock()
			writeJSON(rw, http.StatusOK, rules)
		case p == "/faults" && r.Method == http.MethodDelete:
			w.mu.Lock()
			w.rules = nil
			w.mu.Unlock()
			writeJSON(rw, http.StatusOK, map[string]string{"status": "cleared"})
		case p == "/vms" && r.Method == http.MethodGet:
			writeJSON(rw, http.StatusOK, w.vmReport())
		case strings.HasPrefix(p, "/vms/") && r.Method == http.MethodPost:
			w.setVM(rw, r, strings.TrimPrefix(p, "/vms/"))
		default:
			writeJSON(rw, http.StatusNotFound, map[string]string{"error": "unknown control endpoint; see tests/vsphere-sim/control.go"})
		}
	})
}

func writeJSON(rw http.ResponseWriter, status int, v interface{}) {
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(status)
	_ = json.NewEncoder(rw).Encode(v)
}

func (w *World) addRule(rw http.ResponseWriter, r *http.Request) {
	data, err := io.ReadAll(r.Body)
	if err != nil {
		writeJSON(rw, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	var rl rule
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rl); err != nil {
		writeJSON(rw, http.StatusBadRequest, map[string]string{"error": "rule JSON: " + err.Error()})
		return
	}
	if err := rl.validate(); err != nil {
		writeJSON(rw, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	if rl.VM != "" && w.vmByName(rl.VM) == nil {
		writeJSON(rw, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("no VM named %q", rl.VM)})
		return
	}
	w.mu.Lock()
	w.nextRule++
	rl.ID = w.nextRule
	rl.Fired = 0
	w.rules = append(w.rules, &rl)
	w.mu.Unlock()
	writeJSON(rw, http.StatusOK, map[string]int64{"id": rl.ID})
}

func (w *World) setVM(rw http.ResponseWriter, r *http.Request, name string) {
	st := w.vmByName(name)
	if st == nil {
		writeJSON(rw, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("no VM named %q", name)})
		return
	}
	var req map[string]json.RawMessage
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeJSON(rw, http.StatusBadRequest, map[string]string{"error": "settings JSON: " + err.Error()})
		return
	}
	var tools *time.Duration
	setTools := false
	var shutdown *time.Duration
	for k, v := range req {
		switch k {
		case "tools_delay_ms":
			setTools = true
			var ms *int64
			if err := json.Unmarshal(v, &ms); err != nil || (ms != nil && *ms < 0) {
				writeJSON(rw, http.StatusBadRequest, map[string]string{"error": "tools_delay_ms must be a non-negative number or null (never)"})
				return
			}
			if ms != nil {
				d := time.Duration(*ms) * time.Millisecond
				tools = &d
			}
		case "shutdown_delay_ms":
			var ms int64
			if err := json.Unmarshal(v, &ms); err != nil || ms < 0 {
				writeJSON(rw, http.StatusBadRequest, map[string]string{"error": "shutdown_delay_ms must be a non-negative number"})
				return
			}
			d := time.Duration(ms) * time.Millisecond
			shutdown = &d
		default:
			writeJSON(rw, http.StatusBadRequest, map[string]string{"error": fmt.Sprintf("unknown setting %q (tools_delay_ms, shutdown_delay_ms)", k)})
			return
		}
	}
	w.mu.Lock()
	if setTools {
		st.toolsDelay = tools
	}
	if shutdown != nil {
		st.shutdownDelay = *shutdown
	}
	w.mu.Unlock()
	writeJSON(rw, http.StatusOK, map[string]string{"status": "ok"})
}

type procReport struct {
	Pid      int64  `json:"pid"`
	Name     string `json:"name"`
	Running  bool   `json:"running"`
	ExitCode *int32 `json:"exit_code,omitempty"`
}

type vmReport struct {
	Name         string       `json:"name"`
	Moref        string       `json:"moref"`
	PowerState   string       `json:"power_state"`
	ToolsRunning bool         `json:"tools_running"`
	Root         string       `json:"root"`
	Processes    []procReport `json:"processes"`
}

func (w *World) vmReport() []vmReport {
	w.mu.Lock()
	var sts []*vmState
	for _, st := range w.vms {
		sts = append(sts, st)
	}
	w.mu.Unlock()
	sort.Slice(sts, func(i, j int) bool { return sts[i].name < sts[j].name })
	var out []vmReport
	for _, st := range sts {
		rep := vmReport{Name: st.name, Moref: st.ref.Value, Root: st.root, PowerState: string(powerState(st.ref)), Processes: []procReport{}}
		w.mu.Lock()
		rep.ToolsRunning = st.toolsRunning
		var procs []*guestProcess
		for _, p := range st.procs {
			procs = append(procs, p)
		}
		w.mu.Unlock()
		sort.Slice(procs, func(i, j int) bool { return procs[i].pid < procs[j].pid })
		for _, p := range procs {
			end, code := p.snapshot()
			pr := procReport{Pid: p.pid, Name: p.name, Running: end == nil}
			if end != nil {
				c := code
				pr.ExitCode = &c
			}
			rep.Processes = append(rep.Processes, pr)
		}
		out = append(out, rep)
	}
	return out
}
