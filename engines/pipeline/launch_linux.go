package pipeline

import "syscall"

// childAttr makes the kernel kill a stage if the driver dies.
func childAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL} }
