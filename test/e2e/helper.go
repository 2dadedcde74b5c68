package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// helperEnv makes the test binary act as a small tool inside envs, so the
// tests need nothing installed: serve, get, wait-signal, whoami.
const helperEnv = "CILO_E2E_HELPER"

func helperMain(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "helper: no command")
		return 2
	}
	switch args[0] {
	case "serve": // serve ADDR REPLY: answer every HTTP request with REPLY
		ln, err := net.Listen("tcp", args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println("listening")
		reply := args[2]
		http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, reply) }))
		return 0
	case "get": // get URL: print the body
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get(args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer resp.Body.Close()
		io.Copy(os.Stdout, resp.Body)
		return 0
	case "wait-signal": // print the first signal received as its number and exit 0
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
		fmt.Println("ready")
		s := <-c
		fmt.Printf("got %d\n", s.(syscall.Signal))
		return 0
	case "whoami": // uid gid cwd env
		wd, _ := os.Getwd()
		fmt.Printf("%d %d %s %s %s\n", os.Getuid(), os.Getgid(), wd, os.Getenv("CILO_ENV"), os.Getenv("HOME"))
		return 0
	}
	fmt.Fprintln(os.Stderr, "helper: unknown command", args[0])
	return 2
}

// helperArgv runs the test binary as the helper inside cilo run.
func helperArgv(args ...string) []string {
	return append([]string{"env", helperEnv + "=1", os.Args[0]}, args...)
}
