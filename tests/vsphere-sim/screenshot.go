package main

// screenshot.go answers CreateScreenshot_Task, which vcsim 0.24.2 lacks, as ESXi does: a
// powered-on VM gets a PNG of its console written into its folder on its datastore
// ("<vm>-<n>.png", n counting up), and the task's result is that datastore path
// ("[LocalDS_0] Qubes_4.2_a/Qubes_4.2_a-1.png"), which vcsim's /folder/ endpoint serves like
// any datastore file (dcPath and dsName select the datastore). A VM that is not powered on fails
// the task with InvalidPowerState. The picture is synthetic (a console-like frame): the
// simulator has no screen.

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

var screenshots int64

// consoleImage is a 320x200 picture: a dark screen with a light status line.
func consoleImage() image.Image {
	img := image.NewRGBA(image.Rect(0, 0, 320, 200))
	for y := 0; y < 200; y++ {
		for x := 0; x < 320; x++ {
			c := color.RGBA{R: 16, G: 16, B: 24, A: 255}
			if y >= 184 || (y%12 < 8 && x < 8+((y*37)%280)) && y < 170 {
				c = color.RGBA{R: 200, G: 200, B: 200, A: 255}
			}
			img.Set(x, y, c)
		}
	}
	return img
}

// createScreenshot handles CreateScreenshot_Task on one of our VMs (false = let vcsim answer).
func (w *World) createScreenshot(rw http.ResponseWriter, m *simulator.Method) bool {
	st := w.vmByRef(m.This)
	vm := simVM(m.This)
	if st == nil || vm == nil {
		return false
	}
	var ps types.VirtualMachinePowerState
	var vmx string
	var dsRefs []types.ManagedObjectReference
	simulator.Map.WithLock(vm, func() {
		ps = vm.Runtime.PowerState
		if vm.Config != nil {
			vmx = vm.Config.Files.VmPathName
		}
		dsRefs = append(dsRefs, vm.Datastore...)
	})
	if ps != types.VirtualMachinePowerStatePoweredOn {
		w.failedTask(rw, m, &types.InvalidPowerState{
			RequestedState: types.VirtualMachinePowerStatePoweredOn,
			ExistingState:  ps,
		}, fmt.Sprintf("The attempted operation cannot be performed in the current state (%s).", ps))
		return true
	}
	var p object.DatastorePath
	if !p.FromString(vmx) || len(dsRefs) == 0 {
		w.failedTask(rw, m, &types.FileFault{}, "the VM has no datastore folder")
		return true
	}
	ds, ok := simulator.Map.Get(dsRefs[0]).(*simulator.Datastore)
	if !ok {
		w.failedTask(rw, m, &types.FileFault{}, "the VM's datastore is gone")
		return true
	}
	var root, dsName string
	simulator.Map.WithLock(ds, func() {
		root = ds.Info.GetDatastoreInfo().Url
		dsName = ds.Name
	})
	n := atomic.AddInt64(&screenshots, 1)
	rel := path.Join(path.Dir(p.Path), fmt.Sprintf("%s-%d.png", st.name, n))
	file := filepath.Join(root, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		w.failedTask(rw, m, &types.FileFault{}, err.Error())
		return true
	}
	f, err := os.Create(file)
	if err == nil {
		err = png.Encode(f, consoleImage())
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		w.failedTask(rw, m, &types.FileFault{}, err.Error())
		return true
	}
	task := simulator.CreateTask(m.This, "createScreenshot", nil)
	simulator.Map.WithLock(task, func() {
		simulator.Map.Update(task, []types.PropertyChange{
			{Name: "info.startTime", Val: time.Now()},
			{Name: "info.completeTime", Val: time.Now()},
			{Name: "info.state", Val: types.TaskInfoStateSuccess},
			{Name: "info.result", Val: fmt.Sprintf("[%s] %s", dsName, rel)},
		})
	})
	writeResponse(rw, m.Name, fmt.Sprintf(`<returnval type="Task">%s</returnval>`, task.Self.Value))
	return true
}
