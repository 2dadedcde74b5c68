// Command api is the example's HTTP API: GET /count adds one to a counter
// kept in the key-value store and returns it as JSON.
package main

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
)

func main() {
	kv := os.Getenv("KV_URL")
	http.HandleFunc("/count", func(w http.ResponseWriter, r *http.Request) {
		resp, err := http.Post(kv+"/incr/visits", "text/plain", nil)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		n, _ := strconv.Atoi(string(b))
		schema := ""
		if s, err := http.Get(kv + "/schema"); err == nil {
			v, _ := io.ReadAll(s.Body)
			s.Body.Close()
			schema = string(v)
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"count": n, "schema": schema})
	})
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	log.Printf("api listening on :8080, kv at %s", kv)
	log.Fatal(http.ListenAndServe(":8080", nil))
}
