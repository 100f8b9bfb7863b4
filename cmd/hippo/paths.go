package main

import (
	"os"
	"path/filepath"
)

// home is the Hippo checkout that holds .cache (tokenizers) and models/: $HIPPO_HOME, else the
// folder above the binary's bin/, else the current directory.
func home() string {
	if h := os.Getenv("HIPPO_HOME"); h != "" {
		return h
	}
	if exe, err := os.Executable(); err == nil {
		if exe, err = filepath.EvalSymlinks(exe); err == nil {
			root := filepath.Dir(filepath.Dir(exe))
			if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
				return root
			}
		}
	}
	wd, _ := os.Getwd()
	return wd
}

func tokenizersDir() string { return filepath.Join(home(), ".cache", "tokenizers") }

func modelsDir() string { return filepath.Join(home(), "models") }
