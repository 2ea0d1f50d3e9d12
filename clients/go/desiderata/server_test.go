package desiderata_test

import (
	"bufio"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// The contract of the server binary: `desiderata serve --port 0` prints
// "desiderata listening on 127.0.0.1:<port>" once it serves.
var listening = regexp.MustCompile(`desiderata listening on (\S+:\d+)`)

// startServer runs $DESIDERATA_SERVE_CMD (default "desiderata serve --port 0")
// as a real process and returns its address; the process is killed at cleanup.
// The server keeps its stores (audit log, decisions, feedback, privacy ledger)
// in a fresh temporary XDG_STATE_HOME: a test sees only its own records, not
// those of earlier runs or of other servers started from the same account.
func startServer(t *testing.T) string {
	t.Helper()
	command := os.Getenv("DESIDERATA_SERVE_CMD")
	if command == "" {
		command = "desiderata serve --port 0"
	}
	args := strings.Fields(command)
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "XDG_STATE_HOME="+t.TempDir()) // removed after the kill below
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %q: %v", command, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	found := make(chan string, 1)
	go func() {
		scanner := bufio.NewScanner(stdout)
		sent := false
		for scanner.Scan() { // keeps draining so the server never blocks on a full pipe
			if m := listening.FindStringSubmatch(scanner.Text()); m != nil && !sent {
				found <- m[1]
				sent = true
			}
		}
		close(found)
	}()
	select {
	case addr, ok := <-found:
		if !ok {
			t.Fatalf("%q exited before listening", command)
		}
		return addr
	case <-time.After(90 * time.Second):
		t.Fatalf("%q did not print %q within 90s", command, listening.String())
	}
	return ""
}
