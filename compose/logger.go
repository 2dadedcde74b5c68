package compose

import (
	"fmt"
	"io"
	"os"
	"sync"
)

// LoggerCommand is the first argument containerd's binary logger passes
// to the engine's LogBinary for services with a terminal (tty: true): the
// shim's file:// target cannot take a terminal, a logging binary can. The
// binary must run [RunLogger] when called as `<bin> compose-log-to <file>`.
const LoggerCommand = "compose-log-to"

// RunLogger is the logging binary's side of containerd's binary logger
// protocol: the task's stdout arrives on fd 3 and its stderr on fd 4, both
// appended to path; closing fd 5 tells the shim the logger is ready. It
// returns when the task's output ends.
func RunLogger(path string) error {
	out, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("open log %s: %w", path, err)
	}
	defer out.Close()
	ready := os.NewFile(5, "ready")
	if ready == nil {
		return fmt.Errorf("log %s: no ready pipe on fd 5 (run by containerd's binary logger only)", path)
	}
	ready.Close()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, fd := range []uintptr{3, 4} {
		f := os.NewFile(fd, "output")
		if f == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer f.Close()
			buf := make([]byte, 32<<10)
			for {
				n, err := f.Read(buf)
				if n > 0 {
					mu.Lock()
					out.Write(buf[:n])
					mu.Unlock()
				}
				if err != nil {
					if err != io.EOF {
						fmt.Fprintf(os.Stderr, "compose log %s: %v\n", path, err)
					}
					return
				}
			}
		}()
	}
	wg.Wait()
	return nil
}
