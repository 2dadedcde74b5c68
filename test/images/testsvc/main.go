// Command testsvc is the one program inside cilo's test images. Its first
// argument picks a role:
//
//	testsvc http -listen :80 -name db [-require URL] [-delay 1s]   serve GET / -> "<name> <CILO_MARK env>"
//	testsvc get URL                                               print the body, exit 1 on failure
//	testsvc crash -after 1s -code 3                               print "crashing", exit with code
//	testsvc exit N                                                exit N at once
//	testsvc sleep                                                 block until killed
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testsvc http|get|crash|exit|sleep ...")
		os.Exit(2)
	}
	args := os.Args[2:]
	switch os.Args[1] {
	case "http":
		serve(args)
	case "get":
		os.Exit(get(args))
	case "crash":
		fs := flag.NewFlagSet("crash", flag.ExitOnError)
		after := fs.Duration("after", time.Second, "run this long")
		code := fs.Int("code", 3, "exit status")
		fs.Parse(args)
		fmt.Println("started")
		time.Sleep(*after)
		fmt.Println("crashing")
		os.Exit(*code)
	case "exit":
		n := 0
		if len(args) > 0 {
			n, _ = strconv.Atoi(args[0])
		}
		fmt.Println("exiting", n)
		os.Exit(n)
	case "sleep":
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
		<-sig
	default:
		fmt.Fprintln(os.Stderr, "testsvc: unknown role", os.Args[1])
		os.Exit(2)
	}
}

func serve(args []string) {
	fs := flag.NewFlagSet("http", flag.ExitOnError)
	listen := fs.String("listen", ":80", "listen address")
	name := fs.String("name", "svc", "answer with this name")
	require := fs.String("require", "", "URL that must answer before serving (checks depends_on ordering)")
	delay := fs.Duration("delay", 0, "wait this long before listening")
	fs.Parse(args)
	if *require != "" {
		if code := fetch(*require, io.Discard); code != 0 {
			fmt.Fprintln(os.Stderr, "required", *require, "not reachable")
			os.Exit(4)
		}
	}
	time.Sleep(*delay)
	host, _ := os.Hostname()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("%s listening on %s as %s\n", *name, *listen, host)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", *name, os.Getenv("CILO_MARK"))
	})}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	if err := srv.Serve(ln); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func get(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: testsvc get URL")
		return 2
	}
	return fetch(args[0], os.Stdout)
}

// fetch writes the body of GET url to w, reporting failure as status 1.
func fetch(url string, w io.Writer) int {
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer resp.Body.Close()
	io.Copy(w, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return 1
	}
	return 0
}
