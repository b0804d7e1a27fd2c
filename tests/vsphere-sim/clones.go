// clones.go: what issue 18's stage re-run on another VM of the pool needs of the simulator
// (CONTRACTS §12): linked clones of a snapshot (CloneVM_Task), deleting a VM (Destroy_Task)
// and snapshot sizes in VirtualMachine.layoutEx.
//
// CloneVM_Task of one of our VMs (vCenter model only: a standalone ESXi host answers
// NotSupported, as real ESXi does without vCenter) is checked before vcsim runs it: a name any
// VM of the inventory already has fails the task with DuplicateName; a snapshot that is gone
// is ManagedObjectNotFound, one of another VM or none at all for a linked clone
// (diskMoveType createNewChildDiskBacking) or a memory clone is InvalidArgument
// (spec.snapshot). vcsim then creates the VM; before the task ends, the clone gets a guest
// root R of its own (state/vms/<clone>, the same mapping as every VM, CONTRACTS §2) that is a
// copy of the snapshot's saved guest tree (of the source's current tree for a full clone
// without a snapshot), the source's Tools and shutdown timing, and the source's annotation
// (ESXi copies the whole configuration; the host must rewrite the clone's note). A clone with
// memory = true of a snapshot taken with memory comes back suspended, as vSphere documents
// ("a clone in suspended state"), and PowerOnVM_Task resumes it: Tools start after the boot
// delay, as after a revert to a memory snapshot (stages.go); otherwise it is powered off.
//
// Destroy_Task (vcsim refuses a powered-on VM with InvalidPowerState, as ESXi does) ends every
// guest process of the VM, removes its guest root and its snapshots' saved trees, and the VM
// leaves the inventory and the control API.
//
// layoutEx: every snapshot's data file (<vm>-SnapshotN.vmsn, layoutEx.snapshot[].dataKey)
// reports as its size the bytes of the snapshot's saved guest tree (regular files' sizes), and
// a snapshot taken with memory also gets a memory file (<vm>-SnapshotN.vmem, memoryKey) of
// memoryFileBytes. The VMs have no virtual disks, so layoutEx.snapshot[].disk is empty.
//
// Fidelity: vSphere also removes the network adapters of a memory clone (to avoid MAC
// conflicts with the source); these VMs have none. vCenter refuses a duplicate name only
// within the destination folder; here any VM's name is refused. A clone is a full copy of the
// tree, not a child disk: later changes to the source do not show through either way.

package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// memoryFileBytes is the size a memory snapshot's memory file reports in layoutEx.
const memoryFileBytes = 1 << 20

// cloneRequest is a CloneVM_Task the middleware accepted, for the hook that sees vcsim's task.
type cloneRequest struct {
	source   *vmState
	name     string
	snapshot *types.ManagedObjectReference
	memory   bool // comes back suspended (memory = true of a memory snapshot)
}

// vmNamed is the VM of the inventory with this name, if any.
func vmNamed(name string) *types.ManagedObjectReference {
	for _, e := range simulator.Map.All("VirtualMachine") {
		if e.Entity().Name == name {
			ref := e.Reference()
			return &ref
		}
	}
	return nil
}

// cloneVM checks a CloneVM_Task of one of our VMs and lets vcsim run it (false = not ours).
func (w *World) cloneVM(rw http.ResponseWriter, r *http.Request, m *simulator.Method, body []byte) bool {
	st := w.vmByRef(m.This)
	req, ok := m.Body.(*types.CloneVM_Task)
	if st == nil || !ok {
		return false
	}
	if rec := w.replay(r, probeBody); rec.Code != http.StatusOK {
		copyRecorded(rw, rec)
		return true
	}
	if w.cfg.Model == "esx" {
		writeFault(rw, "NotSupported", "The operation is not supported on the object.", "")
		return true
	}
	if existing := vmNamed(req.Name); existing != nil {
		w.failedTask(rw, m, &types.DuplicateName{Name: req.Name, Object: *existing},
			fmt.Sprintf("The name '%s' already exists.", req.Name))
		return true
	}
	linked := req.Spec.Location.DiskMoveType == string(types.VirtualMachineRelocateDiskMoveOptionsCreateNewChildDiskBacking)
	memory := req.Spec.Memory != nil && *req.Spec.Memory
	snap := req.Spec.Snapshot
	if snap != nil {
		ss, ok := simulator.Map.Get(*snap).(*simulator.VirtualMachineSnapshot)
		if !ok {
			writeFault(rw, "ManagedObjectNotFound",
				fmt.Sprintf("The object 'vim.vm.Snapshot:%s' has already been deleted or has not been completely created", snap.Value),
				fmt.Sprintf(`<obj type="VirtualMachineSnapshot">%s</obj>`, xmlEscape(snap.Value)))
			return true
		}
		if ss.Vm != st.ref {
			w.failedTask(rw, m, &types.InvalidArgument{InvalidProperty: "spec.snapshot"},
				fmt.Sprintf("A specified parameter was not correct: spec.snapshot (%s is not a snapshot of %s)", snap.Value, st.name))
			return true
		}
	} else if linked || memory {
		w.failedTask(rw, m, &types.InvalidArgument{InvalidProperty: "spec.snapshot"},
			"A specified parameter was not correct: spec.snapshot (a linked or memory clone needs a snapshot)")
		return true
	}
	pc := &cloneRequest{source: st, name: req.Name, snapshot: snap, memory: memory && snap != nil && snapshotHasMemory(*snap)}
	// One clone at a time: the hook finds the request in pendingClone while vcsim runs it.
	w.cloneMu.Lock()
	defer w.cloneMu.Unlock()
	w.mu.Lock()
	w.pendingClone = pc
	w.mu.Unlock()
	rec := w.replay(r, string(body))
	w.mu.Lock()
	w.pendingClone = nil
	w.mu.Unlock()
	copyRecorded(rw, rec)
	return true
}

// takeClone is the accepted clone request of the source VM whose task vcsim is creating.
func (w *World) takeClone(source *vmState) *cloneRequest {
	w.mu.Lock()
	defer w.mu.Unlock()
	pc := w.pendingClone
	if pc == nil || pc.source != source {
		return nil
	}
	w.pendingClone = nil
	return pc
}

// adoptClone gives the VM vcsim just cloned its guest root, timing, annotation and power
// state. It runs inside the clone task, with the source VM locked by the call.
func (w *World) adoptClone(pc *cloneRequest, ref types.ManagedObjectReference) error {
	root := w.vmRoot(pc.name)
	if err := os.RemoveAll(root); err != nil {
		return err
	}
	src := pc.source.root
	if pc.snapshot != nil {
		src = w.snapshotDir(pc.source.name, *pc.snapshot)
	}
	if err := copyTree(src, root); err != nil {
		return err
	}
	w.mu.Lock()
	st := &vmState{
		name:          pc.name,
		ref:           ref,
		root:          root,
		shutdownDelay: pc.source.shutdownDelay,
		procs:         map[int64]*guestProcess{},
	}
	if d := pc.source.toolsDelay; d != nil {
		delay := *d
		st.toolsDelay = &delay
	}
	w.vms[ref] = st
	w.byName[pc.name] = st
	w.mu.Unlock()

	annotation := ""
	if src := simVM(pc.source.ref); src != nil && src.Config != nil {
		annotation = src.Config.Annotation // the call holds the source's lock
	}
	clone := simVM(ref)
	if clone == nil {
		return fmt.Errorf("the clone %s is not in the inventory", pc.name)
	}
	simulator.Map.WithLock(clone, func() {
		w.setToolsState(ref, false)
		changes := []types.PropertyChange{
			{Name: "config.changeVersion", Val: nextChangeVersion()},
			{Name: "config.annotation", Val: annotation},
			{Name: "summary.config.annotation", Val: annotation},
		}
		if pc.memory {
			changes = append(changes,
				types.PropertyChange{Name: "runtime.powerState", Val: types.VirtualMachinePowerStateSuspended},
				types.PropertyChange{Name: "summary.runtime.powerState", Val: types.VirtualMachinePowerStateSuspended})
		}
		simulator.Map.Update(clone, changes)
	})
	log.Printf("cloned %s from %s (snapshot %v, suspended %v)", pc.name, pc.source.name, pc.snapshot, pc.memory)
	return nil
}

// forgetVM is the end of a Destroy_Task: the guest's processes, root and saved trees go.
func (w *World) forgetVM(st *vmState) {
	w.stopGuest(st)
	w.mu.Lock()
	delete(w.vms, st.ref)
	if w.byName[st.name] == st {
		delete(w.byName, st.name)
	}
	w.mu.Unlock()
	for _, dir := range []string{st.root, filepath.Join(w.cfg.StateDir, "snapshots", st.name)} {
		if err := os.RemoveAll(dir); err != nil {
			log.Printf("destroy %s: %v", st.name, err)
		}
	}
	log.Printf("destroyed %s", st.name)
}

// treeBytes is the sum of the sizes of the regular files under dir.
func treeBytes(dir string) int64 {
	var n int64
	_ = filepath.Walk(dir, func(_ string, info os.FileInfo, err error) error {
		if err == nil && info.Mode().IsRegular() {
			n += info.Size()
		}
		return nil
	})
	return n
}

// recordSnapshotSizes writes the sizes of a new snapshot's files into the VM's layoutEx (see
// the file comment). It runs inside the snapshot task, with the VM locked by the call.
func recordSnapshotSizes(ref, snap types.ManagedObjectReference, tree int64, memory bool) {
	vm := simVM(ref)
	if vm == nil || vm.LayoutEx == nil {
		return
	}
	lx := vm.LayoutEx
	for i := range lx.Snapshot {
		s := &lx.Snapshot[i]
		if s.Key != snap {
			continue
		}
		var next int32
		dataName := ""
		for j := range lx.File {
			f := &lx.File[j]
			if f.Key >= next {
				next = f.Key + 1
			}
			if f.Key == s.DataKey {
				f.Size, f.UniqueSize = tree, tree
				dataName = f.Name
			}
		}
		if memory && dataName != "" {
			lx.File = append(lx.File, types.VirtualMachineFileLayoutExFileInfo{
				Key:        next,
				Name:       strings.TrimSuffix(dataName, ".vmsn") + ".vmem",
				Type:       string(types.VirtualMachineFileLayoutExFileTypeSnapshotMemory),
				Size:       memoryFileBytes,
				UniqueSize: memoryFileBytes,
				Accessible: types.NewBool(true),
			})
			s.MemoryKey = next
		}
		return
	}
}
