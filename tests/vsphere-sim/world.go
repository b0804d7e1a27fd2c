package main

// world.go owns the simulated guests: one root directory R per VM (state/vms/<name>), the
// snapshot copies of R (state/snapshots/<vm>/<snapshot id>), VMware Tools state driven by
// power state, and the registry hook that keeps all of that in step with vcsim's objects.
//
// Invariants: R's path never changes for the life of the process (revert replaces its
// contents); when a VM powers off or reverts, every process of its guest ends, as in a real
// power-off: each guest program's process group is killed, and then every process whose
// environment names the VM's root (SDCI_GUEST_ROOT=R, which every guest program gets and the
// Qubes world passes on, contracts §2/§6) — so descendants in process groups or sessions of
// their own (dom0's steps, the qubes' agents) end too; Tools are "running" only while the VM
// is powered on and the per-VM delay has passed in the same power-on generation; every
// configuration change bumps the VM's config.changeVersion (ReconfigVM_Task honours it).

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

type vmState struct {
	name          string
	ref           types.ManagedObjectReference
	root          string
	toolsDelay    *time.Duration // nil = never
	shutdownDelay time.Duration
	generation    int // bumped on every power-state change
	toolsRunning  bool
	procs         map[int64]*guestProcess
}

// World is the simulator's extension state. All fields behind mu.
type World struct {
	mu        sync.Mutex
	cfg       *Config
	service   *simulator.Service
	inner     http.Handler
	scheme    string
	port      string
	vms       map[types.ManagedObjectReference]*vmState
	byName    map[string]*vmState
	transfers map[string]*transfer
	nextXfer  int64
	rules     []*rule
	nextRule  int64
	// reconfigMu serialises ReconfigVM_Task's compare-and-set of config.changeVersion.
	reconfigMu sync.Mutex
	// cloneMu serialises CloneVM_Task; pendingClone (behind mu) is the one vcsim is running.
	cloneMu      sync.Mutex
	pendingClone *cloneRequest
}

func newWorld(cfg *Config) (*World, error) {
	w := &World{
		cfg:       cfg,
		vms:       map[types.ManagedObjectReference]*vmState{},
		byName:    map[string]*vmState{},
		transfers: map[string]*transfer{},
	}
	for _, dir := range []string{"vms", "snapshots", "logs"} {
		if err := os.MkdirAll(filepath.Join(cfg.StateDir, dir), 0o755); err != nil {
			return nil, err
		}
	}
	return w, nil
}

func (w *World) vmRoot(name string) string {
	return filepath.Join(w.cfg.StateDir, "vms", name)
}

func (w *World) snapshotDir(vm string, snapshot types.ManagedObjectReference) string {
	return filepath.Join(w.cfg.StateDir, "snapshots", vm, snapshot.Value)
}

// install registers the registry hook (tools state, task fixes, snapshot copies).
func (w *World) install() {
	simulator.Map.AddHandler(&hook{w: w})
	installGuestManagers(w)
}

// createInventory creates the configured VMs (powered off) and their snapshot chains.
func (w *World) createInventory(ctx context.Context, cfg *Config) error {
	c, err := vim25.NewClient(ctx, w.service)
	if err != nil {
		return err
	}
	dcs := map[string]types.ManagedObjectReference{}
	for _, e := range simulator.Map.All("Datacenter") {
		dcs[e.Entity().Name] = e.Reference()
	}
	for _, vc := range cfg.VMs {
		var dcRef types.ManagedObjectReference
		if cfg.Model == "esx" {
			dcRef = simulator.Map.Any("Datacenter").Reference()
		} else {
			ref, ok := dcs[fmt.Sprintf("DC%d", vc.Datacenter)]
			if !ok {
				return fmt.Errorf("VM %s: no datacenter DC%d", vc.Name, vc.Datacenter)
			}
			dcRef = ref
		}
		dc := simulator.Map.Get(dcRef).(*simulator.Datacenter)
		folder := dc.VmFolder
		// The model puts every resource of a foldered datacenter into a sub-folder (F0).
		if f, ok := simulator.Map.Get(folder).(*simulator.Folder); ok {
			for _, child := range f.ChildEntity {
				if child.Type == "Folder" {
					folder = child
					break
				}
			}
		}
		if cfg.Model == "vcenter" && vc.Datacenter >= 1 {
			nested, err := ensureFolder(ctx, c, folder, "Qubes")
			if err != nil {
				return err
			}
			folder = nested
		}
		host := hostIn(dcRef)
		if host == nil {
			return fmt.Errorf("no host in datacenter %s", dc.Name)
		}
		hs := object.NewHostSystem(c, *host)
		pool, err := hs.ResourcePool(ctx)
		if err != nil {
			return err
		}
		spec := types.VirtualMachineConfigSpec{
			Name:     vc.Name,
			GuestId:  string(types.VirtualMachineGuestOsIdentifierOtherLinux64Guest),
			NumCPUs:  2,
			MemoryMB: 4096,
			Files:    &types.VirtualMachineFileInfo{VmPathName: "[LocalDS_0]"},
		}
		task, err := object.NewFolder(c, folder).CreateVM(ctx, spec, pool, hs)
		if err != nil {
			return err
		}
		info, err := task.WaitForResult(ctx, nil)
		if err != nil {
			return fmt.Errorf("create VM %s: %v", vc.Name, err)
		}
		ref := info.Result.(types.ManagedObjectReference)
		st := &vmState{
			name:          vc.Name,
			ref:           ref,
			root:          w.vmRoot(vc.Name),
			shutdownDelay: time.Duration(vc.ShutdownDelayMs) * time.Millisecond,
			procs:         map[int64]*guestProcess{},
		}
		if vc.ToolsDelayMs != nil {
			d := time.Duration(*vc.ToolsDelayMs) * time.Millisecond
			st.toolsDelay = &d
		}
		for _, dir := range []string{"", "home/" + cfg.GuestUsername, "usr/local/bin", "usr/bin", "tmp"} {
			if err := os.MkdirAll(filepath.Join(st.root, dir), 0o755); err != nil {
				return err
			}
		}
		w.mu.Lock()
		w.vms[ref] = st
		w.byName[vc.Name] = st
		w.mu.Unlock()
		w.setToolsState(ref, false)
		if vm := simVM(ref); vm != nil {
			simulator.Map.WithLock(vm, func() {
				simulator.Map.Update(vm, []types.PropertyChange{{Name: "config.changeVersion", Val: nextChangeVersion()}})
			})
		}

		vm := object.NewVirtualMachine(c, ref)
		for _, name := range vc.Snapshots {
			task, err := vm.CreateSnapshot(ctx, name, "", false, false)
			if err != nil {
				return err
			}
			if err := task.Wait(ctx); err != nil {
				return fmt.Errorf("snapshot %s of %s: %v", name, vc.Name, err)
			}
		}
	}
	return nil
}

func ensureFolder(ctx context.Context, c *vim25.Client, parent types.ManagedObjectReference, name string) (types.ManagedObjectReference, error) {
	if f, ok := simulator.Map.Get(parent).(*simulator.Folder); ok {
		for _, child := range f.ChildEntity {
			if e, ok := simulator.Map.Get(child).(mo.Entity); ok && child.Type == "Folder" && e.Entity().Name == name {
				return child, nil
			}
		}
	}
	f, err := object.NewFolder(c, parent).CreateFolder(ctx, name)
	if err != nil {
		return types.ManagedObjectReference{}, err
	}
	return f.Reference(), nil
}

// hostIn returns a HostSystem inside the given datacenter.
func hostIn(dc types.ManagedObjectReference) *types.ManagedObjectReference {
	for _, e := range simulator.Map.All("HostSystem") {
		if d := ancestor(e.Reference(), "Datacenter"); d != nil && *d == dc {
			ref := e.Reference()
			return &ref
		}
	}
	return nil
}

func ancestor(ref types.ManagedObjectReference, kind string) *types.ManagedObjectReference {
	for i := 0; i < 64; i++ {
		e, ok := simulator.Map.Get(ref).(mo.Entity)
		if !ok || e.Entity().Parent == nil {
			return nil
		}
		ref = *e.Entity().Parent
		if ref.Type == kind {
			return &ref
		}
	}
	return nil
}

// vmByRef returns the state of a simulated VM (nil for VMs we did not create).
func (w *World) vmByRef(ref types.ManagedObjectReference) *vmState {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.vms[ref]
}

func (w *World) vmByName(name string) *vmState {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.byName[name]
}

func simVM(ref types.ManagedObjectReference) *simulator.VirtualMachine {
	vm, _ := simulator.Map.Get(ref).(*simulator.VirtualMachine)
	return vm
}

func powerState(ref types.ManagedObjectReference) types.VirtualMachinePowerState {
	vm := simVM(ref)
	if vm == nil {
		return ""
	}
	var ps types.VirtualMachinePowerState
	simulator.Map.WithLock(vm, func() { ps = vm.Runtime.PowerState })
	return ps
}

// setToolsState publishes the Tools properties (through Map.Update, so WaitForUpdatesEx sees
// them). The caller holds the VM's registry lock, or runs inside a Map.Update whose caller
// does (the registry hook); it never takes that lock itself (sync.Mutex is not reentrant).
// Lock order everywhere: VM registry lock, then w.mu.
func (w *World) setToolsState(ref types.ManagedObjectReference, running bool) {
	vm := simVM(ref)
	if vm == nil {
		return
	}
	w.mu.Lock()
	if st := w.vms[ref]; st != nil {
		st.toolsRunning = running
	}
	w.mu.Unlock()
	simulator.Map.Update(vm, toolsChanges(running))
}

func toolsChanges(running bool) []types.PropertyChange {
	runStatus, status, guestState := "guestToolsNotRunning", types.VirtualMachineToolsStatusToolsNotRunning, "notRunning"
	if running {
		runStatus, status, guestState = "guestToolsRunning", types.VirtualMachineToolsStatusToolsOk, "running"
	}
	return []types.PropertyChange{
		{Name: "guest.toolsRunningStatus", Val: runStatus},
		{Name: "guest.toolsStatus", Val: status},
		{Name: "guest.toolsVersionStatus2", Val: "guestToolsUnmanaged"},
		{Name: "guest.toolsVersion", Val: "12325"},
		{Name: "guest.guestState", Val: guestState},
		{Name: "guest.guestOperationsReady", Val: running},
		{Name: "guest.interactiveGuestOperationsReady", Val: false},
		{Name: "summary.guest.toolsRunningStatus", Val: runStatus},
		{Name: "summary.guest.toolsStatus", Val: status},
	}
}

// powerChanged runs (from the registry hook) after runtime.powerState of a VM changed.
func (w *World) powerChanged(ref types.ManagedObjectReference, state types.VirtualMachinePowerState) {
	w.mu.Lock()
	st := w.vms[ref]
	if st == nil {
		w.mu.Unlock()
		return
	}
	st.generation++
	gen := st.generation
	delay := st.toolsDelay
	wasRunning := st.toolsRunning
	w.mu.Unlock()

	if state != types.VirtualMachinePowerStatePoweredOn {
		w.stopGuest(st)
		if wasRunning {
			w.setToolsState(ref, false)
		}
		return
	}
	if delay == nil {
		return
	}
	time.AfterFunc(*delay, func() {
		vm := simVM(ref)
		if vm == nil {
			return
		}
		simulator.Map.WithLock(vm, func() {
			w.mu.Lock()
			current := st.generation == gen
			w.mu.Unlock()
			if current && vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
				w.setToolsState(ref, true)
			}
		})
	})
}

// stopGuest ends every process of the VM's guest (as a power-off does), forgets the guest
// programs (as a Tools restart does) and invalidates its pending file transfers.
func (w *World) stopGuest(st *vmState) {
	w.mu.Lock()
	procs := st.procs
	st.procs = map[int64]*guestProcess{}
	for id, t := range w.transfers {
		if t.vm == st {
			delete(w.transfers, id)
		}
	}
	w.mu.Unlock()
	for _, p := range procs {
		p.kill()
	}
	killGuestTree(st.root)
}

// changeVersions makes config.changeVersion values unique within the process.
var changeVersions int64

// nextChangeVersion is a new config.changeVersion in ESXi's form (an RFC 3339 time with
// microseconds), unique even for changes within the same microsecond.
func nextChangeVersion() string {
	n := atomic.AddInt64(&changeVersions, 1)
	t := time.Now().UTC().Add(time.Duration(n) * time.Nanosecond)
	return t.Format("2006-01-02T15:04:05.000000000Z")
}

// guestPids lists the processes whose environment holds SDCI_GUEST_ROOT=root (processes that
// vanish or cannot be read while listing are skipped).
func guestPids(root string) []int {
	want := []byte("SDCI_GUEST_ROOT=")
	clean := filepath.Clean(root)
	self := os.Getpid()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if bytes.HasPrefix(kv, want) && filepath.Clean(string(kv[len(want):])) == clean {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// killGuestTree SIGKILLs every process of the guest rooted at root, again until none is left
// (a process may fork while it is being killed), for at most two seconds.
func killGuestTree(root string) {
	deadline := time.Now().Add(2 * time.Second)
	for {
		pids := guestPids(root)
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if time.Now().After(deadline) {
			log.Printf("power-off of %s: processes still left after 2s: %v", root, pids)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// powerOffNow is the guest-initiated power-off (the end of ShutdownGuest).
func (w *World) powerOffNow(ref types.ManagedObjectReference) {
	vm := simVM(ref)
	if vm == nil {
		return
	}
	simulator.Map.WithLock(vm, func() {
		if vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOff {
			return
		}
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "runtime.powerState", Val: types.VirtualMachinePowerStatePoweredOff},
			{Name: "summary.runtime.powerState", Val: types.VirtualMachinePowerStatePoweredOff},
		})
	})
}

func (w *World) killAllProcesses() {
	w.mu.Lock()
	var all []*guestProcess
	var roots []string
	for _, st := range w.vms {
		roots = append(roots, st.root)
		for _, p := range st.procs {
			all = append(all, p)
		}
	}
	w.mu.Unlock()
	for _, p := range all {
		p.kill()
	}
	for _, root := range roots {
		killGuestTree(root)
	}
}

// copyTree copies src's contents into dst (created), preserving modes and symlinks.
func copyTree(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	out, err := exec.Command("cp", "-a", "--", src+"/.", dst+"/").CombinedOutput()
	if err != nil {
		return fmt.Errorf("cp -a %s %s: %v: %s", src, dst, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// replaceTree makes dst's contents an exact copy of src's, keeping dst itself.
func replaceTree(src, dst string) error {
	entries, err := os.ReadDir(dst)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	return copyTree(src, dst)
}

// hook is the registry handler: Tools follow power state, tasks get ESXi's names and
// entities, snapshot create/revert/remove copy, restore and drop the guest directory, clones
// get a guest directory of their own and destroyed VMs lose theirs (clones.go).
type hook struct{ w *World }

func (h *hook) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "SdciHook", Value: "sdci-hook"}
}

func (h *hook) PutObject(obj mo.Reference) {
	task, ok := obj.(*simulator.Task)
	if !ok {
		return
	}
	if task.Info.Entity == nil {
		return
	}
	entity := *task.Info.Entity // before fixTaskInfo points snapshot tasks at their VM
	fixTaskInfo(task)
	switch task.Info.DescriptionId {
	case "VirtualMachine.createSnapshot":
		st := h.w.vmByRef(entity)
		if st == nil {
			return
		}
		memory := takeSnapshotMemory(st.name) // stages.go
		orig := task.Execute
		task.Execute = func(t *simulator.Task) (types.AnyType, types.BaseMethodFault) {
			res, fault := orig(t)
			if fault != nil {
				return res, fault
			}
			snap, ok := res.(types.ManagedObjectReference)
			if !ok {
				return res, fault
			}
			if err := copyTree(st.root, h.w.snapshotDir(st.name, snap)); err != nil {
				log.Printf("snapshot %s of %s: %v", snap.Value, st.name, err)
				return nil, &types.SnapshotFault{}
			}
			recordSnapshotMemory(snap, memory)
			recordSnapshotSizes(st.ref, snap, treeBytes(h.w.snapshotDir(st.name, snap)), memory) // clones.go
			return res, nil
		}
	case "VirtualMachineSnapshot.revertToSnapshot":
		snap := entity
		ss, ok := simulator.Map.Get(snap).(*simulator.VirtualMachineSnapshot)
		if !ok {
			return
		}
		st := h.w.vmByRef(ss.Vm)
		if st == nil {
			return
		}
		orig := task.Execute
		task.Execute = func(t *simulator.Task) (types.AnyType, types.BaseMethodFault) {
			// A snapshot taken without memory reverts to a powered-off VM; one with memory
			// comes back powered on (stages.go).
			h.w.powerOffNow(st.ref)
			if err := replaceTree(h.w.snapshotDir(st.name, snap), st.root); err != nil {
				log.Printf("revert %s to %s: %v", st.name, snap.Value, err)
				return nil, &types.FileFault{File: st.root}
			}
			res, fault := orig(t)
			if fault == nil && snapshotHasMemory(snap) {
				h.w.powerOnNow(st.ref)
			}
			return res, fault
		}
	case "VirtualMachine.cloneVm": // clones.go
		st := h.w.vmByRef(entity)
		if st == nil {
			return
		}
		pc := h.w.takeClone(st)
		if pc == nil {
			return
		}
		orig := task.Execute
		task.Execute = func(t *simulator.Task) (types.AnyType, types.BaseMethodFault) {
			res, fault := orig(t)
			if fault != nil {
				return res, fault
			}
			ref, ok := res.(types.ManagedObjectReference)
			if !ok {
				return res, fault
			}
			if err := h.w.adoptClone(pc, ref); err != nil {
				log.Printf("clone %s of %s: %v", pc.name, st.name, err)
				return nil, &types.FileFault{File: h.w.vmRoot(pc.name)}
			}
			return res, nil
		}
	case "VirtualMachine.destroy": // clones.go
		st := h.w.vmByRef(entity)
		if st == nil {
			return
		}
		orig := task.Execute
		task.Execute = func(t *simulator.Task) (types.AnyType, types.BaseMethodFault) {
			res, fault := orig(t)
			if fault == nil {
				h.w.forgetVM(st)
			}
			return res, fault
		}
	}
}

func (h *hook) UpdateObject(obj mo.Reference, changes []types.PropertyChange) {
	vm, ok := obj.(*mo.VirtualMachine)
	if !ok {
		return
	}
	for _, c := range changes {
		if c.Name == "runtime.powerState" {
			if ps, ok := c.Val.(types.VirtualMachinePowerState); ok {
				h.w.powerChanged(vm.Self, ps)
			}
			return
		}
	}
}

func (h *hook) RemoveObject(ref types.ManagedObjectReference) {
	if ref.Type != "VirtualMachineSnapshot" {
		return
	}
	ss, ok := simulator.Map.Get(ref).(*simulator.VirtualMachineSnapshot)
	if !ok {
		return
	}
	if st := h.w.vmByRef(ss.Vm); st != nil {
		_ = os.RemoveAll(h.w.snapshotDir(st.name, ref))
	}
}
