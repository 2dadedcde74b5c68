// Command migrate is the example's one-shot job: it writes the schema
// version into the key-value store and exits; the api waits for it to
// complete successfully.
package main

import (
	"log"
	"net/http"
	"os"
	"strings"
)

func main() {
	kv := os.Getenv("KV_URL")
	req, _ := http.NewRequest(http.MethodPut, kv+"/schema", strings.NewReader("v1"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		log.Fatalf("migrate: %v", err)
	}
	resp.Body.Close()
	log.Printf("migrate: schema v1 written to %s", kv)
}
