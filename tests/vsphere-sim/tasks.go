package main

// tasks.go gives vcsim's tasks the TaskInfo that ESXi/vCenter report: info.name is the WSDL
// method name (pyVmomi's WaitForTask looks the name up and fails on "PowerOn"), and snapshot
// tasks name the VM as their entity, not the snapshot (pyVmomi rejects a snapshot there).

import (
	"strings"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
)

// wsdlTaskNames maps vcsim's descriptionId suffix to the WSDL method name.
var wsdlTaskNames = map[string]string{
	"powerOn":            "PowerOnVM_Task",
	"powerOff":           "PowerOffVM_Task",
	"suspend":            "SuspendVM_Task",
	"reset":              "ResetVM_Task",
	"createSnapshot":     "CreateSnapshot_Task",
	"revertToSnapshot":   "RevertToSnapshot_Task",
	"removeSnapshot":     "RemoveSnapshot_Task",
	"RemoveAllSnapshots": "RemoveAllSnapshots_Task",
	"revertSnapshot":     "RevertToCurrentSnapshot_Task",
	"reconfigure":        "ReconfigVM_Task",
	"destroy":            "Destroy_Task",
	"createVm":           "CreateVM_Task",
	"cloneVm":            "CloneVM_Task",
	"createScreenshot":   "CreateScreenshot_Task",
}

func fixTaskInfo(task *simulator.Task) {
	desc := task.Info.DescriptionId
	if i := strings.LastIndex(desc, "."); i >= 0 {
		if name, ok := wsdlTaskNames[desc[i+1:]]; ok {
			task.Info.Name = name
		}
	}
	if !strings.HasSuffix(task.Info.Name, "_Task") && task.Info.Name != "" {
		task.Info.Name += "_Task"
	}
	if task.Info.Entity == nil {
		return
	}
	ref := *task.Info.Entity
	if ref.Type == "VirtualMachineSnapshot" {
		if ss, ok := simulator.Map.Get(ref).(*simulator.VirtualMachineSnapshot); ok {
			vm := ss.Vm
			task.Info.Entity = &vm
			ref = vm
		}
	}
	if e, ok := simulator.Map.Get(ref).(mo.Entity); ok && e.Entity().Name != "" {
		task.Info.EntityName = e.Entity().Name
	}
}
