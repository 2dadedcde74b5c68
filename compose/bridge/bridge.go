// Package bridge runs an env's compose services in the cilo-compose binary.
//
// The cilo binary is on the hot path of every `cilo run`; linking the
// containerd client and compose-go into it would cost tens of
// milliseconds of package initialisation on each call, whether the env has
// services or not. So cilo carries only this client, which answers "no
// compose file" itself and otherwise hands the env to `cilo-compose
// __services <op>`, the same program built with the compose engine.
package bridge

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"

	"github.com/cilo-dev/cilo/compose/files"
	"github.com/cilo-dev/cilo/sandbox/config"
	"github.com/cilo-dev/cilo/sandbox/state"
)

// Binary is the name of the full program, installed beside cilo.
const Binary = "cilo-compose"

// Command is the hidden command of cilo-compose that serves this client.
const Command = "__services"

// Request is what the client sends on the command's stdin.
type Request struct {
	Env *state.Env `json:"env"`
}

// Response is what the command writes on stdout.
type Response struct {
	Services []state.Service `json:"services,omitempty"`
	Error    string          `json:"error,omitempty"`
}

// Client implements sandbox.Services by running cilo-compose.
type Client struct {
	environ []string  // the config, as CILO_* variables
	stderr  io.Writer // progress and warnings of the engine
}

// New returns a client that passes environ (cilo's resolved config as
// variables) to cilo-compose and shows its progress on stderr.
func New(environ []string, stderr io.Writer) *Client {
	return &Client{environ: environ, stderr: stderr}
}

// Up starts env's services; (nil, nil) without a compose file, without
// starting anything.
func (c *Client) Up(ctx context.Context, env *state.Env) ([]state.Service, error) {
	if !files.Has(env, os.Environ()) {
		return nil, nil
	}
	return c.call(ctx, "up", env)
}

// Down stops env's services, if it has or had any.
func (c *Client) Down(ctx context.Context, env *state.Env) error {
	if !c.mayHaveServices(env) {
		return nil
	}
	_, err := c.call(ctx, "down", env)
	return err
}

// Remove removes env's services and their data, if it has or had any.
func (c *Client) Remove(ctx context.Context, env *state.Env) error {
	if !c.mayHaveServices(env) {
		return nil
	}
	_, err := c.call(ctx, "remove", env)
	return err
}

func (c *Client) mayHaveServices(env *state.Env) bool {
	return len(env.Services) > 0 || files.Has(env, os.Environ())
}

func (c *Client) call(ctx context.Context, op string, env *state.Env) ([]state.Service, error) {
	exe, err := config.Program(Binary)
	if err != nil {
		return nil, err
	}
	req, err := json.Marshal(Request{Env: env})
	if err != nil {
		return nil, fmt.Errorf("encode env for %s: %w", Binary, err)
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, exe, Command, op)
	cmd.Env = append(os.Environ(), c.environ...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(req), &out, c.stderr
	runErr := cmd.Run()
	var resp Response
	if err := json.Unmarshal(out.Bytes(), &resp); err != nil {
		return nil, fmt.Errorf("%s %s %s: %w", Binary, Command, op, errors.Join(runErr, err))
	}
	if resp.Error != "" {
		return nil, errors.New(resp.Error)
	}
	if runErr != nil {
		return nil, fmt.Errorf("%s %s %s: %w", Binary, Command, op, runErr)
	}
	return resp.Services, nil
}
