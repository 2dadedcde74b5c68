// Command web is the example's front: it asks the api for the count and
// renders it.
package main

import (
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
)

func main() {
	api := os.Getenv("API_URL")
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		resp, err := http.Get(api + "/count")
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		var v struct {
			Count  int    `json:"count"`
			Schema string `json:"schema"`
		}
		json.NewDecoder(resp.Body).Decode(&v)
		host, _ := os.Hostname()
		fmt.Fprintf(w, "<h1>counter</h1><p>visits: %d (schema %s, served by %s)</p>\n", v.Count, v.Schema, host)
	})
	log.Printf("web listening on :3000, api at %s", api)
	log.Fatal(http.ListenAndServe(":3000", nil))
}
