// Command kv is the example's key-value store: GET /k reads, PUT /k
// writes, POST /incr/k adds one and returns the new value. It keeps its
// data in a JSON file on the service's named volume.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
)

func main() {
	listen := flag.String("listen", ":6379", "listen address")
	data := flag.String("data", "/data/kv.json", "data file")
	check := flag.String("check", "", "healthcheck: GET this URL and exit")
	flag.Parse()
	if *check != "" {
		resp, err := http.Get(*check)
		if err != nil || resp.StatusCode != 200 {
			os.Exit(1)
		}
		return
	}
	s := &store{path: *data, m: map[string]string{}}
	if b, err := os.ReadFile(*data); err == nil {
		json.Unmarshal(b, &s.m)
	}
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	http.HandleFunc("/incr/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, s.incr(strings.TrimPrefix(r.URL.Path, "/incr/")))
	})
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		k := strings.TrimPrefix(r.URL.Path, "/")
		switch r.Method {
		case http.MethodPut:
			b, _ := io.ReadAll(r.Body)
			s.set(k, string(b))
		default:
			v, ok := s.get(k)
			if !ok {
				http.NotFound(w, r)
				return
			}
			io.WriteString(w, v)
		}
	})
	log.Printf("kv listening on %s, data in %s", *listen, *data)
	log.Fatal(http.ListenAndServe(*listen, nil))
}

type store struct {
	mu   sync.Mutex
	path string
	m    map[string]string
}

func (s *store) get(k string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[k]
	return v, ok
}

func (s *store) set(k, v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[k] = v
	s.save()
}

func (s *store) incr(k string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, _ := strconv.Atoi(s.m[k])
	n++
	s.m[k] = strconv.Itoa(n)
	s.save()
	return n
}

func (s *store) save() {
	b, _ := json.Marshal(s.m)
	tmp := s.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err == nil {
		os.Rename(tmp, s.path)
	}
}
