package main

// guest.go replaces vcsim's GuestProcessManager and GuestFileManager (registered with Map.Put
// under the same MORs, embedding the stock types by value) so guest operations run without
// docker: a guest program is a local process in its own process group, with the VM's root
// directory R standing in for "/" (tests/vsphere-sim/README.md, "Guest path mapping").
//
// Preconditions are checked in ESXi's order: VM powered on (InvalidPowerState), Tools running
// (GuestOperationsUnavailable), guest credentials (InvalidGuestLogin).

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// processRetention is how long an exited process stays listed (ESXi: 5 minutes).
const processRetention = 5 * time.Minute

type guestProcess struct {
	mu      sync.Mutex
	pid     int64
	name    string
	owner   string
	cmdLine string
	start   time.Time
	end     *time.Time
	exit    int32
}

func (p *guestProcess) snapshot() (end *time.Time, exit int32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.end, p.exit
}

// kill sends SIGKILL to the process group (no-op once the process was reaped).
func (p *guestProcess) kill() {
	p.mu.Lock()
	ended := p.end != nil
	p.mu.Unlock()
	if !ended {
		_ = syscall.Kill(-int(p.pid), syscall.SIGKILL)
	}
}

// ProcessManager is the replacement GuestProcessManager.
type ProcessManager struct {
	simulator.GuestProcessManager
	w *World
}

// FileManager is the replacement GuestFileManager.
type FileManager struct {
	simulator.GuestFileManager
	w *World
}

func installGuestManagers(w *World) {
	si := simulator.Map.Get(vim25.ServiceInstance).(*simulator.ServiceInstance)
	gom := simulator.Map.Get(*si.Content.GuestOperationsManager).(*simulator.GuestOperationsManager)
	pm := &ProcessManager{w: w}
	pm.Self = *gom.ProcessManager
	simulator.Map.Put(pm)
	fm := &FileManager{w: w}
	fm.Self = *gom.FileManager
	simulator.Map.Put(fm)
}

func fault(msg string, f types.BaseMethodFault) *soap.Fault {
	return simulator.Fault(msg, f)
}

// precheck applies ESXi's guest-operation preconditions.
func (w *World) precheck(vmRef types.ManagedObjectReference, auth types.BaseGuestAuthentication) (*vmState, *soap.Fault) {
	st := w.vmByRef(vmRef)
	if st == nil {
		return nil, fault(fmt.Sprintf("managed object not found: %s", vmRef), &types.ManagedObjectNotFound{Obj: vmRef})
	}
	ps := powerState(vmRef)
	if ps != types.VirtualMachinePowerStatePoweredOn {
		return nil, fault("The attempted operation cannot be performed in the current state (Powered off).", &types.InvalidPowerState{
			RequestedState: types.VirtualMachinePowerStatePoweredOn,
			ExistingState:  ps,
		})
	}
	w.mu.Lock()
	tools := st.toolsRunning
	w.mu.Unlock()
	if !tools {
		return nil, fault("The guest operations agent could not be contacted.", &types.GuestOperationsUnavailable{})
	}
	npa, ok := auth.(*types.NamePasswordAuthentication)
	if !ok || npa.Username != w.cfg.GuestUsername || npa.Password != w.cfg.GuestPassword {
		return nil, fault("Failed to authenticate with the guest operating system using the supplied credentials.", &types.InvalidGuestLogin{})
	}
	return st, nil
}

// precheckPath applies the preconditions, then maps the guest path p (guestPath).
func (w *World) precheckPath(vmRef types.ManagedObjectReference, auth types.BaseGuestAuthentication, p string) (*vmState, string, *soap.Fault) {
	st, f := w.precheck(vmRef, auth)
	if f != nil {
		return nil, "", f
	}
	hostPath, f := guestPath(st, p)
	if f != nil {
		return nil, "", f
	}
	return st, hostPath, nil
}

func fileNotFound(p string) *soap.Fault {
	return fault(fmt.Sprintf("File %s was not found", p), &types.FileNotFound{FileFault: types.FileFault{File: p}})
}

func notAFile(p string) *soap.Fault {
	return fault(fmt.Sprintf("%s is not a file", p), &types.NotAFile{FileFault: types.FileFault{File: p}})
}

func fileAlreadyExists(p string) *soap.Fault {
	return fault(fmt.Sprintf("The file %s already exists", p), &types.FileAlreadyExists{FileFault: types.FileFault{File: p}})
}

// guestPath maps an absolute guest path to R/<path>; ".." cannot leave R.
func guestPath(st *vmState, p string) (string, *soap.Fault) {
	if !strings.HasPrefix(p, "/") {
		return "", fault(fmt.Sprintf("A specified parameter was not correct: %q is not an absolute guest path", p), &types.InvalidArgument{InvalidProperty: "path"})
	}
	return filepath.Join(st.root, path.Clean(p)), nil
}

func (m *ProcessManager) StartProgramInGuest(ctx *simulator.Context, req *types.StartProgramInGuest) soap.HasFault {
	body := new(methods.StartProgramInGuestBody)
	st, f := m.w.precheck(req.Vm, req.Auth)
	if f != nil {
		body.Fault_ = f
		return body
	}
	spec := req.Spec.GetGuestProgramSpec()
	program, f := guestPath(st, spec.ProgramPath)
	if f != nil {
		body.Fault_ = f
		return body
	}
	if info, err := os.Stat(program); err != nil || info.IsDir() {
		body.Fault_ = fileNotFound(spec.ProgramPath)
		return body
	}
	args, err := splitWords(spec.Arguments)
	if err != nil {
		body.Fault_ = fault(fmt.Sprintf("A specified parameter was not correct: arguments: %v", err), &types.InvalidArgument{InvalidProperty: "arguments"})
		return body
	}
	home := filepath.Join(st.root, "home", m.w.cfg.GuestUsername)
	dir := home
	if spec.WorkingDirectory != "" {
		d, f := guestPath(st, spec.WorkingDirectory)
		if f != nil {
			body.Fault_ = f
			return body
		}
		if info, err := os.Stat(d); err != nil || !info.IsDir() {
			body.Fault_ = fileNotFound(spec.WorkingDirectory)
			return body
		}
		dir = d
	}
	_ = os.MkdirAll(home, 0o755)

	env := make([]string, 0, len(spec.EnvVariables)+3)
	hasHome, hasPath := false, false
	for _, kv := range spec.EnvVariables {
		key := kv
		if i := strings.IndexByte(kv, '='); i >= 0 {
			key = kv[:i]
		}
		switch key {
		case "SDCI_GUEST_ROOT":
			continue
		case "HOME":
			hasHome = true
		case "PATH":
			hasPath = true
		}
		env = append(env, kv)
	}
	if !hasHome {
		env = append(env, "HOME="+home)
	}
	if !hasPath {
		env = append(env, "PATH="+filepath.Join(st.root, "usr/local/bin")+":"+filepath.Join(st.root, "usr/bin")+":"+os.Getenv("PATH"))
	}
	env = append(env, "SDCI_GUEST_ROOT="+st.root)

	logDir := filepath.Join(m.w.cfg.StateDir, "logs", st.name)
	_ = os.MkdirAll(logDir, 0o755)
	out, err := os.CreateTemp(logDir, "proc-*.log")
	if err != nil {
		body.Fault_ = fault(err.Error(), &types.SystemError{Reason: err.Error()})
		return body
	}
	cmd := &exec.Cmd{
		Path:        program,
		Args:        append([]string{program}, args...),
		Dir:         dir,
		Env:         env,
		Stdout:      out,
		Stderr:      out,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	if err := cmd.Start(); err != nil {
		_ = out.Close()
		if os.IsPermission(err) {
			body.Fault_ = fault(fmt.Sprintf("Access to file %s is denied", spec.ProgramPath), &types.GuestPermissionDenied{})
		} else {
			body.Fault_ = fault(fmt.Sprintf("cannot start %s: %v", spec.ProgramPath, err), &types.FileNotFound{FileFault: types.FileFault{File: spec.ProgramPath}})
		}
		return body
	}
	p := &guestProcess{
		pid:     int64(cmd.Process.Pid),
		name:    path.Base(spec.ProgramPath),
		owner:   m.w.cfg.GuestUsername,
		cmdLine: strings.TrimSpace(fmt.Sprintf("%q %s", spec.ProgramPath, spec.Arguments)),
		start:   time.Now().UTC(),
	}
	_ = os.Rename(out.Name(), filepath.Join(logDir, fmt.Sprintf("%d.log", p.pid)))
	m.w.mu.Lock()
	st.procs[p.pid] = p
	m.w.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		_ = out.Close()
		code := int32(-1)
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok {
			if ws.Signaled() {
				code = 128 + int32(ws.Signal())
			} else {
				code = int32(ws.ExitStatus())
			}
		}
		now := time.Now().UTC()
		p.mu.Lock()
		p.end = &now
		p.exit = code
		p.mu.Unlock()
	}()
	body.Res = &types.StartProgramInGuestResponse{Returnval: p.pid}
	return body
}

// processInfo is GuestProcessInfo with exitCode always present once the process ended (ESXi
// sends <exitCode>0</exitCode>; govmomi's type would omit a zero).
type processInfo struct {
	Name      string     `xml:"name"`
	Pid       int64      `xml:"pid"`
	Owner     string     `xml:"owner"`
	CmdLine   string     `xml:"cmdLine"`
	StartTime time.Time  `xml:"startTime"`
	EndTime   *time.Time `xml:"endTime,omitempty"`
	ExitCode  *int32     `xml:"exitCode,omitempty"`
}

// ListProcessesInGuestResponse is named like the WSDL element on purpose: vcsim's encoder uses
// the Go type name of Res as the response element name.
type ListProcessesInGuestResponse struct {
	Returnval []processInfo `xml:"returnval,omitempty"`
}

type listProcessesBody struct {
	Res    *ListProcessesInGuestResponse
	Fault_ *soap.Fault
}

func (b *listProcessesBody) Fault() *soap.Fault { return b.Fault_ }

func (m *ProcessManager) ListProcessesInGuest(ctx *simulator.Context, req *types.ListProcessesInGuest) soap.HasFault {
	body := new(listProcessesBody)
	st, f := m.w.precheck(req.Vm, req.Auth)
	if f != nil {
		body.Fault_ = f
		return body
	}
	now := time.Now()
	m.w.mu.Lock()
	var procs []*guestProcess
	for pid, p := range st.procs {
		if end, _ := p.snapshot(); end != nil && now.Sub(*end) > processRetention {
			delete(st.procs, pid)
			continue
		}
		procs = append(procs, p)
	}
	m.w.mu.Unlock()
	want := map[int64]bool{}
	for _, pid := range req.Pids {
		want[pid] = true
	}
	res := &ListProcessesInGuestResponse{}
	for _, p := range procs {
		if len(want) > 0 && !want[p.pid] {
			continue
		}
		end, exit := p.snapshot()
		info := processInfo{Name: p.name, Pid: p.pid, Owner: p.owner, CmdLine: p.cmdLine, StartTime: p.start}
		if end != nil {
			e, x := *end, exit
			info.EndTime = &e
			info.ExitCode = &x
		}
		res.Returnval = append(res.Returnval, info)
	}
	body.Res = res
	return body
}

func (m *ProcessManager) TerminateProcessInGuest(ctx *simulator.Context, req *types.TerminateProcessInGuest) soap.HasFault {
	body := new(methods.TerminateProcessInGuestBody)
	st, f := m.w.precheck(req.Vm, req.Auth)
	if f != nil {
		body.Fault_ = f
		return body
	}
	m.w.mu.Lock()
	p := st.procs[req.Pid]
	m.w.mu.Unlock()
	if p == nil {
		body.Fault_ = fault(fmt.Sprintf("The guest process %d was not found", req.Pid), &types.GuestProcessNotFound{Pid: req.Pid})
		return body
	}
	if end, _ := p.snapshot(); end != nil {
		body.Fault_ = fault(fmt.Sprintf("The guest process %d was not found", req.Pid), &types.GuestProcessNotFound{Pid: req.Pid})
		return body
	}
	p.kill()
	body.Res = new(types.TerminateProcessInGuestResponse)
	return body
}

// transfer is a pending /guestFile URL: single use, 10 minutes, dropped on power-off.
type transfer struct {
	id       string
	token    string
	vm       *vmState
	hostPath string
	upload   bool
	size     int64
	perms    int64
	expires  time.Time
}

func (m *FileManager) InitiateFileTransferToGuest(ctx *simulator.Context, req *types.InitiateFileTransferToGuest) soap.HasFault {
	body := new(methods.InitiateFileTransferToGuestBody)
	st, p, f := m.w.precheckPath(req.Vm, req.Auth, req.GuestFilePath)
	if f != nil {
		body.Fault_ = f
		return body
	}
	if info, err := os.Stat(p); err == nil {
		if info.IsDir() {
			body.Fault_ = notAFile(req.GuestFilePath)
			return body
		}
		if !req.Overwrite {
			body.Fault_ = fileAlreadyExists(req.GuestFilePath)
			return body
		}
	}
	var perms int64
	if posix, ok := req.FileAttributes.(*types.GuestPosixFileAttributes); ok {
		perms = posix.Permissions
	}
	url := m.w.newTransfer(st, p, true, req.FileSize, perms)
	body.Res = &types.InitiateFileTransferToGuestResponse{Returnval: url}
	return body
}

func (m *FileManager) InitiateFileTransferFromGuest(ctx *simulator.Context, req *types.InitiateFileTransferFromGuest) soap.HasFault {
	body := new(methods.InitiateFileTransferFromGuestBody)
	st, p, f := m.w.precheckPath(req.Vm, req.Auth, req.GuestFilePath)
	if f != nil {
		body.Fault_ = f
		return body
	}
	info, err := os.Stat(p)
	if err != nil {
		body.Fault_ = fileNotFound(req.GuestFilePath)
		return body
	}
	if !info.Mode().IsRegular() {
		body.Fault_ = notAFile(req.GuestFilePath)
		return body
	}
	mtime := info.ModTime().UTC()
	attrs := &types.GuestPosixFileAttributes{
		GuestFileAttributes: types.GuestFileAttributes{ModificationTime: &mtime, AccessTime: &mtime},
		Permissions:         int64(info.Mode().Perm()),
	}
	if sys, ok := info.Sys().(*syscall.Stat_t); ok {
		uid, gid := int32(sys.Uid), int32(sys.Gid)
		attrs.OwnerId, attrs.GroupId = &uid, &gid
	}
	url := m.w.newTransfer(st, p, false, info.Size(), 0)
	body.Res = &types.InitiateFileTransferFromGuestResponse{Returnval: types.FileTransferInformation{
		Attributes: attrs,
		Size:       info.Size(),
		Url:        url,
	}}
	return body
}

func (m *FileManager) MakeDirectoryInGuest(ctx *simulator.Context, req *types.MakeDirectoryInGuest) soap.HasFault {
	body := new(methods.MakeDirectoryInGuestBody)
	_, p, f := m.w.precheckPath(req.Vm, req.Auth, req.DirectoryPath)
	if f != nil {
		body.Fault_ = f
		return body
	}
	if _, err := os.Stat(p); err == nil {
		body.Fault_ = fileAlreadyExists(req.DirectoryPath)
		return body
	}
	var err error
	if req.CreateParentDirectories {
		err = os.MkdirAll(p, 0o755)
	} else {
		err = os.Mkdir(p, 0o755)
	}
	if err != nil {
		body.Fault_ = fileNotFound(path.Dir(req.DirectoryPath))
		return body
	}
	body.Res = new(types.MakeDirectoryInGuestResponse)
	return body
}

func (m *FileManager) DeleteFileInGuest(ctx *simulator.Context, req *types.DeleteFileInGuest) soap.HasFault {
	body := new(methods.DeleteFileInGuestBody)
	_, p, f := m.w.precheckPath(req.Vm, req.Auth, req.FilePath)
	if f != nil {
		body.Fault_ = f
		return body
	}
	info, err := os.Lstat(p)
	if err != nil {
		body.Fault_ = fileNotFound(req.FilePath)
		return body
	}
	if info.IsDir() {
		body.Fault_ = notAFile(req.FilePath)
		return body
	}
	_ = os.Remove(p)
	body.Res = new(types.DeleteFileInGuestResponse)
	return body
}
