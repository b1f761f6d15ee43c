package main

// The part of ssh_config(5) that `rbee node install` honours, so that a host
// reachable as `ssh gpu-1` is reachable as `rbee node install gpu-1`: Host
// blocks (patterns with * and ?, negation with !), HostName, User, Port,
// IdentityFile and UserKnownHostsFile, the first value obtained winning as in
// ssh. Match and Include blocks are not followed (the hosts they name need
// their settings on the command line).

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// sshHostConfig is what ~/.ssh/config says about one host alias.
type sshHostConfig struct {
	HostName      string
	User          string
	Port          string
	IdentityFiles []string
	KnownHosts    []string
}

// readSSHConfig reads file for alias; a missing file is no configuration.
func readSSHConfig(file, alias string) (sshHostConfig, error) {
	var out sshHostConfig
	if file == "" {
		return out, nil
	}
	f, err := os.Open(file)
	if errors.Is(err, fs.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return out, fmt.Errorf("ssh config: %w", err)
	}
	defer f.Close()
	match := true // settings before the first Host apply to every host
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		key, val, ok := sshConfigLine(sc.Text())
		if !ok {
			continue
		}
		switch key {
		case "host":
			match = hostMatches(strings.Fields(val), alias)
			continue
		case "match":
			match = false
			continue
		}
		if !match {
			continue
		}
		val = strings.Trim(val, `"`)
		switch key {
		case "hostname":
			if out.HostName == "" {
				out.HostName = strings.ReplaceAll(val, "%h", alias)
			}
		case "user":
			if out.User == "" {
				out.User = val
			}
		case "port":
			if out.Port == "" {
				out.Port = val
			}
		case "identityfile":
			out.IdentityFiles = append(out.IdentityFiles, expandHome(val))
		case "userknownhostsfile":
			if out.KnownHosts == nil {
				for _, p := range strings.Fields(val) {
					out.KnownHosts = append(out.KnownHosts, expandHome(p))
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("ssh config %s: %w", file, err)
	}
	return out, nil
}

// sshConfigLine splits "Key value" or "Key=value", comments and blank lines
// giving !ok. The key is lower-cased: ssh_config keys are case-insensitive.
func sshConfigLine(s string) (key, val string, ok bool) {
	s = strings.TrimSpace(s)
	if s == "" || strings.HasPrefix(s, "#") {
		return "", "", false
	}
	i := strings.IndexAny(s, " \t=")
	if i < 0 {
		return "", "", false
	}
	key, val = strings.ToLower(s[:i]), strings.TrimSpace(s[i:])
	val = strings.TrimSpace(strings.TrimPrefix(val, "="))
	return key, val, val != ""
}

// hostMatches applies a Host line's patterns: any positive pattern matching,
// and no negated one.
func hostMatches(patterns []string, alias string) bool {
	matched := false
	for _, p := range patterns {
		neg := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(p, "!")
		if ok, _ := path.Match(strings.ToLower(p), strings.ToLower(alias)); ok {
			if neg {
				return false
			}
			matched = true
		}
	}
	return matched
}

// expandHome turns a leading ~/ into the home directory.
func expandHome(p string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, strings.TrimPrefix(p, "~"))
		}
	}
	return p
}
