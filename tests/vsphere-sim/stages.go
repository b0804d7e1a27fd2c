// stages.go: what issue 18's stages need of the simulator. A snapshot taken with memory
// (CreateSnapshot_Task memory=true, of a powered-on VM) keeps the guest tree as every snapshot
// does and, on revert, comes back powered on (Tools start after the VM's boot delay, as after a
// resume); without memory the revert leaves the VM powered off, as before. AcquireTicket answers
// a webmks ticket (VirtualMachineTicket: ticket, host, port, sslThumbprint, url) naming the
// simulator's own address, so the host can show how to reach a held VM's console.
//
// Fidelity: ESXi also resumes the guest's processes from a memory snapshot; here every guest
// process ends at the revert (as the revert to a snapshot without memory does), so the guest
// tree at R is exactly the snapshot's and nothing of the snapshot's job runs on.

package main

import (
	"fmt"
	"net/http"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

var memorySnaps = struct {
	sync.Mutex
	pending map[string]bool // VM name -> the memory flag of its CreateSnapshot_Task in flight
	taken   map[string]bool // snapshot moref value -> taken with memory
}{pending: map[string]bool{}, taken: map[string]bool{}}

// noteSnapshotRequest remembers the memory flag of a CreateSnapshot_Task (from the middleware).
func noteSnapshotRequest(m *simulator.Method, vm string) {
	req, ok := m.Body.(*types.CreateSnapshot_Task)
	if !ok {
		return
	}
	memorySnaps.Lock()
	memorySnaps.pending[vm] = req.Memory && powerState(m.This) == types.VirtualMachinePowerStatePoweredOn
	memorySnaps.Unlock()
}

// takeSnapshotMemory is the memory flag of the VM's snapshot task being created.
func takeSnapshotMemory(vm string) bool {
	memorySnaps.Lock()
	defer memorySnaps.Unlock()
	m := memorySnaps.pending[vm]
	delete(memorySnaps.pending, vm)
	return m
}

func recordSnapshotMemory(snap types.ManagedObjectReference, memory bool) {
	memorySnaps.Lock()
	memorySnaps.taken[snap.Value] = memory
	memorySnaps.Unlock()
}

func snapshotHasMemory(snap types.ManagedObjectReference) bool {
	memorySnaps.Lock()
	defer memorySnaps.Unlock()
	return memorySnaps.taken[snap.Value]
}

// powerOnNow powers the VM on (a revert to a memory snapshot); Tools follow via powerChanged.
func (w *World) powerOnNow(ref types.ManagedObjectReference) {
	vm := simVM(ref)
	if vm == nil {
		return
	}
	simulator.Map.WithLock(vm, func() {
		if vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
			return
		}
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "runtime.powerState", Val: types.VirtualMachinePowerStatePoweredOn},
			{Name: "summary.runtime.powerState", Val: types.VirtualMachinePowerStatePoweredOn},
		})
	})
}

// acquireTicket answers AcquireTicket for a VM with a webmks ticket; true when answered.
func (w *World) acquireTicket(rw http.ResponseWriter, r *http.Request, m *simulator.Method) bool {
	_, vm := callVM(m)
	if vm == "" {
		return false
	}
	if powerState(m.This) != types.VirtualMachinePowerStatePoweredOn {
		writeFault(rw, "InvalidPowerState", "the VM is not powered on", "")
		return true
	}
	host := r.Host
	inner := fmt.Sprintf(`<returnval><ticket>sim-ticket-%s</ticket><host>%s</host><port>443</port><sslThumbprint>00:00</sslThumbprint><url>wss://%s/ticket/sim-ticket-%s</url></returnval>`,
		xmlEscape(m.This.Value), xmlEscape(hostOnly(host)), xmlEscape(host), xmlEscape(m.This.Value))
	writeResponse(rw, "AcquireTicket", inner)
	return true
}

func hostOnly(hostport string) string {
	for i := len(hostport) - 1; i >= 0; i-- {
		if hostport[i] == ':' {
			return hostport[:i]
		}
	}
	return hostport
}
