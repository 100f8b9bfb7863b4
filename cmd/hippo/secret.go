package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/hippo-bench/hippo/transport"
)

// Secrets never come from argv: any user of the machine can read a process's arguments (ps,
// /proc/PID/cmdline). They come from the environment or from a file only its owner can read.

// argvSecretFlag is a hidden flag kept only to refuse it with directions.
func argvSecretFlag(name, env, fileFlag string) cli.Flag {
	return &cli.StringSliceFlag{Name: name, Hidden: true,
		Usage: fmt.Sprintf("refused: put the value in $%s or a file given with --%s", env, fileFlag)}
}

// refuseArgvSecret errors when the hidden argv flag name was used.
func refuseArgvSecret(c *cli.Context, name, env, fileFlag string) error {
	if c.IsSet(name) {
		return fmt.Errorf("--%s puts a secret on the command line, where every user of this machine can read it (ps): set $%s, or write it to a file only you can read (chmod 600) and give --%s FILE", name, env, fileFlag)
	}
	return nil
}

// readSecretFile reads a secret from path, refusing a file that others can read or an empty one.
func readSecretFile(flag, path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("--%s: %w", flag, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("--%s: %s is readable by other users (mode %v): run chmod 600 %s", flag, path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--%s: %w", flag, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("--%s: %s is empty: write the secret into it", flag, path)
	}
	return s, nil
}

// pipelineSecretFlags are the flags of every command that joins a pipeline.
func pipelineSecretFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "secret-file", Usage: "pipeline: file holding the stages' shared secret (default: $" + transport.SecretEnv + "; required beyond loopback)"},
		argvSecretFlag("secret", transport.SecretEnv, "secret-file"),
	}
}

// pipelineSecret returns the shared secret from --secret-file, else $HIPPO_SECRET ("" if none).
func pipelineSecret(c *cli.Context) (string, error) {
	if err := refuseArgvSecret(c, "secret", transport.SecretEnv, "secret-file"); err != nil {
		return "", err
	}
	if path := c.String("secret-file"); path != "" {
		return readSecretFile("secret-file", path)
	}
	return os.Getenv(transport.SecretEnv), nil
}
