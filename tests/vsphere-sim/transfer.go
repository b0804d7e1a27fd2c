package main

// transfer.go serves ESXi's guest file transfer URLs: /guestFile?id=N&token=T, handed out by
// InitiateFileTransfer{To,From}Guest with host "*" (clients substitute the host they connect
// to). A URL is single use, expires after 10 minutes and dies when its VM powers off. An
// upload must carry exactly fileSize bytes; missing parent directories are created (the guest
// path mapping contract); the file is written atomically (temp file + rename).

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

const transferLifetime = 10 * time.Minute

func randomToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (w *World) newTransfer(st *vmState, hostPath string, upload bool, size, perms int64) string {
	w.mu.Lock()
	w.nextXfer++
	t := &transfer{
		id:       strconv.FormatInt(w.nextXfer, 10),
		token:    randomToken(),
		vm:       st,
		hostPath: hostPath,
		upload:   upload,
		size:     size,
		perms:    perms,
		expires:  time.Now().Add(transferLifetime),
	}
	w.transfers[t.id] = t
	w.mu.Unlock()
	host := "*"
	if w.cfg.GuestURLPort {
		host = "*:" + w.port
	}
	return fmt.Sprintf("%s://%s/guestFile?id=%s&token=%s", w.scheme, host, t.id, t.token)
}

// takeTransfer returns the pending transfer named by the query if id, token, direction and
// lifetime match. It stays registered until finishTransfer (only one use succeeds).
func (w *World) lookupTransfer(r *http.Request, upload bool) (*transfer, int, string) {
	q := r.URL.Query()
	w.mu.Lock()
	defer w.mu.Unlock()
	t := w.transfers[q.Get("id")]
	if t == nil || t.token != q.Get("token") {
		return nil, http.StatusNotFound, "no such transfer (unknown, used, expired or its VM powered off)"
	}
	if time.Now().After(t.expires) {
		delete(w.transfers, t.id)
		return nil, http.StatusNotFound, "transfer expired"
	}
	if t.upload != upload {
		return nil, http.StatusMethodNotAllowed, "wrong method for this transfer"
	}
	return t, 0, ""
}

func (w *World) finishTransfer(t *transfer) {
	w.mu.Lock()
	delete(w.transfers, t.id)
	w.mu.Unlock()
}

func (w *World) serveGuestFile(rw http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodPut:
		t, status, msg := w.lookupTransfer(r, true)
		if t == nil {
			http.Error(rw, msg, status)
			return
		}
		data, err := io.ReadAll(io.LimitReader(r.Body, t.size+1))
		if err != nil {
			http.Error(rw, "reading body: "+err.Error(), http.StatusBadRequest)
			return
		}
		if int64(len(data)) != t.size {
			http.Error(rw, fmt.Sprintf("body size does not match fileSize %d", t.size), http.StatusBadRequest)
			return
		}
		if err := writeAtomically(t.hostPath, data, t.perms); err != nil {
			http.Error(rw, err.Error(), http.StatusInternalServerError)
			return
		}
		w.finishTransfer(t)
		rw.WriteHeader(http.StatusOK)
	case http.MethodGet:
		t, status, msg := w.lookupTransfer(r, false)
		if t == nil {
			http.Error(rw, msg, status)
			return
		}
		f, err := os.Open(t.hostPath)
		if err != nil {
			http.Error(rw, err.Error(), http.StatusNotFound)
			return
		}
		defer f.Close()
		info, err := f.Stat()
		if err != nil {
			http.Error(rw, err.Error(), http.StatusInternalServerError)
			return
		}
		w.finishTransfer(t)
		rw.Header().Set("Content-Type", "application/octet-stream")
		rw.Header().Set("Content-Length", strconv.FormatInt(info.Size(), 10))
		rw.WriteHeader(http.StatusOK)
		_, _ = io.Copy(rw, f)
	default:
		http.Error(rw, "use PUT (upload) or GET (download)", http.StatusMethodNotAllowed)
	}
}

func writeAtomically(p string, data []byte, perms int64) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".upload-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	mode := os.FileMode(0o644)
	if perms != 0 {
		mode = os.FileMode(perms & 0o777)
	}
	if err := os.Chmod(tmp.Name(), mode); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), p)
}
