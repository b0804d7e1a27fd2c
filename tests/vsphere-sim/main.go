// Command vsphere-sim is VMware's govmomi simulator (vcsim, Debian's 0.24.2 library) extended
// with what sdci's tests need and stock vcsim lacks without docker: guest programs and guest
// file transfer backed by one local directory per VM, VMware Tools that start after a boot
// delay, snapshots that really copy the guest directory, asynchronous guest shutdown, and an
// HTTP control API for fault and delay injection.
//
// It is started by the Rust harness (tests/src/vsphere_sim.rs) with `-config FILE` (JSON, see
// Config) and prints one JSON line on stdout once it answers (see Ready). It exits when stdin
// closes or on SIGTERM/SIGINT, killing every guest process group first.
//
// See README.md beside this file for the API, the guest path mapping and the fidelity notes.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/vmware/govmomi/simulator"
)

// VMConfig describes one simulated VM.
type VMConfig struct {
	Name       string   `json:"name"`
	Datacenter int      `json:"datacenter"`
	Snapshots  []string `json:"snapshots"`
	// ToolsDelayMs: VMware Tools start this long after power-on; null = never.
	ToolsDelayMs *int64 `json:"tools_delay_ms"`
	// ShutdownDelayMs: ShutdownGuest powers the VM off this long after it answered.
	ShutdownDelayMs int64 `json:"shutdown_delay_ms"`
}

// Config is the JSON file given with -config.
type Config struct {
	Model         string     `json:"model"` // "esx" or "vcenter"
	Listen        string     `json:"listen"`
	ControlListen string     `json:"control_listen"`
	TLS           bool       `json:"tls"`
	StateDir      string     `json:"state_dir"`
	Username      string     `json:"username"`
	Password      string     `json:"password"`
	GuestUsername string     `json:"guest_username"`
	GuestPassword string     `json:"guest_password"`
	GuestURLPort  bool       `json:"guest_url_port"`
	Trace         bool       `json:"trace"`
	VMs           []VMConfig `json:"vms"`
}

// Ready is the line printed on stdout once the simulator answers.
type Ready struct {
	URL        string `json:"url"`
	ControlURL string `json:"control_url"`
	CACert     string `json:"ca_cert,omitempty"`
	Thumbprint string `json:"thumbprint_sha256,omitempty"`
	Pid        int    `json:"pid"`
}

func main() {
	configPath := flag.String("config", "", "JSON config file (see Config in main.go)")
	flag.Parse()
	log.SetFlags(log.Ltime | log.Lmicroseconds)
	log.SetPrefix("vsphere-sim: ")
	if *configPath == "" {
		log.Fatal("usage: vsphere-sim -config FILE")
	}
	cfg, err := readConfig(*configPath)
	if err != nil {
		log.Fatal(err)
	}
	if err := run(cfg); err != nil {
		log.Fatal(err)
	}
}

func readConfig(path string) (*Config, error) {
	data, err := ioutil.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %v", err)
	}
	cfg := &Config{Listen: "127.0.0.1:0", ControlListen: "127.0.0.1:0", GuestURLPort: true}
	if err := json.Unmarshal(data, cfg); err != nil {
		return nil, fmt.Errorf("parse config %s: %v", path, err)
	}
	if cfg.StateDir == "" || cfg.Username == "" || cfg.Password == "" || cfg.GuestUsername == "" || cfg.GuestPassword == "" {
		return nil, fmt.Errorf("config %s: state_dir, username, password, guest_username and guest_password are required", path)
	}
	if cfg.Model != "esx" && cfg.Model != "vcenter" {
		return nil, fmt.Errorf("config %s: model must be \"esx\" or \"vcenter\", not %q", path, cfg.Model)
	}
	seen := map[string]bool{}
	for _, vm := range cfg.VMs {
		if vm.Name == "" || seen[vm.Name] || filepath.Base(vm.Name) != vm.Name || vm.Name == "." || vm.Name == ".." {
			return nil, fmt.Errorf("config %s: VM names must be unique, non-empty file names (got %q)", path, vm.Name)
		}
		seen[vm.Name] = true
	}
	return cfg, nil
}

func run(cfg *Config) error {
	simulator.Trace = cfg.Trace
	var model *simulator.Model
	if cfg.Model == "esx" {
		model = simulator.ESX()
		for _, vm := range cfg.VMs {
			if vm.Datacenter != 0 {
				return fmt.Errorf("VM %s: the ESX model has one datacenter (index 0), not %d", vm.Name, vm.Datacenter)
			}
		}
	} else {
		model = simulator.VPX()
		model.Datacenter = 2
		model.Folder = 1
		model.Host = 1
		model.Cluster = 0
		model.ClusterHost = 0
		model.Portgroup = 0
		model.Pool = 0
		for _, vm := range cfg.VMs {
			if vm.Datacenter+1 > model.Datacenter {
				model.Datacenter = vm.Datacenter + 1
			}
		}
	}
	model.Machine = 0
	model.Autostart = false
	if err := model.Create(); err != nil {
		return fmt.Errorf("create model: %v", err)
	}

	world, err := newWorld(cfg)
	if err != nil {
		return err
	}
	world.service = model.Service
	world.install()

	ctx := context.Background()
	if err := world.createInventory(ctx, cfg); err != nil {
		return fmt.Errorf("create inventory: %v", err)
	}

	model.Service.Listen = &url.URL{Host: cfg.Listen, User: url.UserPassword(cfg.Username, cfg.Password)}
	model.Service.ServeMux = http.NewServeMux()
	model.Service.ServeMux.HandleFunc("/guestFile", world.serveGuestFile)
	model.Service.ServeMux.Handle("/_sim/", world.controlHandler())

	var ready Ready
	if cfg.TLS {
		cert, caPath, thumb, err := generateCertificates(cfg.StateDir)
		if err != nil {
			return fmt.Errorf("generate certificate: %v", err)
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
		ready.CACert = caPath
		ready.Thumbprint = thumb
	}
	server := model.Service.NewServer()
	// Requests cannot arrive before the ready line below names the port, so swapping the
	// handler here is not racing a client.
	inner := server.Config.Handler
	world.inner = inner
	server.Config.Handler = world.middleware(inner)
	world.scheme = server.URL.Scheme
	_, port, _ := net.SplitHostPort(server.URL.Host)
	world.port = port

	control, err := net.Listen("tcp", cfg.ControlListen)
	if err != nil {
		return fmt.Errorf("control listener: %v", err)
	}
	controlMux := http.NewServeMux()
	controlMux.Handle("/_sim/", world.controlHandler())
	go func() { _ = http.Serve(control, controlMux) }()

	u := *server.URL
	u.User = nil
	ready.URL = u.String()
	ready.ControlURL = "http://" + control.Addr().String() + "/_sim"
	ready.Pid = os.Getpid()
	line, _ := json.Marshal(ready)
	fmt.Println(string(line))

	// Run until stdin closes (the harness died or dropped us) or a signal arrives.
	done := make(chan string, 2)
	go func() {
		_, _ = io.Copy(ioutil.Discard, bufio.NewReader(os.Stdin))
		done <- "stdin closed"
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { done <- (<-sig).String() }()
	reason := <-done
	log.Printf("stopping (%s)", reason)
	world.killAllProcesses()
	// No model.Remove(): it walks the registry unlocked while requests may still run; the
	// datastore directories live under TMPDIR, which the harness points into its state dir.
	os.Exit(0)
	return nil
}
