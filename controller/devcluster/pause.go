// Command pause is the dev node's pod sandbox process (containerd's sandbox_image).
//
// It holds the pod's namespaces open and does nothing else: it exits 0 on SIGTERM or
// SIGINT, and as PID 1 of a pod that shares its PID namespace it reaps the orphans that
// get re-parented to it, so they never pile up as zombies. No registry can be reached
// on the dev machine, so images.py builds this (static, CGO_ENABLED=0) instead of
// pulling registry.k8s.io/pause.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig == syscall.SIGCHLD {
			reapAll()
			continue
		}
		os.Exit(0)
	}
}

// reapAll collects every exited child; one SIGCHLD may stand for several exits.
func reapAll() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
