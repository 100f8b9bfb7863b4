//go:build !linux

package pipeline

import "syscall"

func childAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{} }
