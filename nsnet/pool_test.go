package nsnet

import (
	"errors"
	"net/netip"
	"testing"
)

func TestPoolSubnets(t *testing.T) {
	tests := []struct {
		name   string
		pool   string
		index  int
		subnet string
		gw     string
		size   int
	}{
		{"first_of_16", "10.224.0.0/16", 0, "10.224.0.0/24", "10.224.0.1", 256},
		{"last_of_16", "10.224.0.0/16", 255, "10.224.255.0/24", "10.224.255.1", 256},
		{"crosses_octet_in_12", "10.224.0.0/12", 300, "10.225.44.0/24", "10.225.44.1", 4096},
		{"single_24", "10.230.7.0/24", 0, "10.230.7.0/24", "10.230.7.1", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := NewPool(netip.MustParsePrefix(tt.pool))
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Subnet(tt.index).String(); got != tt.subnet {
				t.Errorf("Subnet(%d) = %s, want %s", tt.index, got, tt.subnet)
			}
			if got := p.Host(tt.index, 1).String(); got != tt.gw {
				t.Errorf("Host(%d, 1) = %s, want %s", tt.index, got, tt.gw)
			}
			if p.Size() != tt.size {
				t.Errorf("Size = %d, want %d", p.Size(), tt.size)
			}
			if i, ok := p.Index(p.Host(tt.index, 2)); !ok || i != tt.index {
				t.Errorf("Index(Host(%d, 2)) = %d, %v", tt.index, i, ok)
			}
		})
	}
}

func TestPoolRejects(t *testing.T) {
	for _, s := range []string{"10.0.0.0/25", "10.0.0.0/7", "fd00::/64"} {
		if _, err := NewPool(netip.MustParsePrefix(s)); err == nil {
			t.Errorf("NewPool(%s) accepted", s)
		}
	}
}

func TestPoolAllocate(t *testing.T) {
	p, _ := NewPool(netip.MustParsePrefix("10.224.0.0/22")) // 4 subnets
	tests := []struct {
		name  string
		used  []int
		taken []string
		want  int
		err   error
	}{
		{"empty_takes_lowest", nil, nil, 0, nil},
		{"reuses_released_hole", []int{1, 2}, nil, 0, nil},
		{"skips_used", []int{0, 1}, nil, 2, nil},
		{"skips_host_route", []int{0}, []string{"10.224.1.0/24"}, 2, nil},
		{"skips_host_address", nil, []string{"10.224.0.77/32"}, 1, nil},
		{"wider_host_route_blocks_all", nil, []string{"10.224.0.0/16"}, 0, ErrPoolExhausted},
		{"exhausted", []int{0, 1, 2, 3}, nil, 0, ErrPoolExhausted},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			used := map[int]bool{}
			for _, i := range tt.used {
				used[i] = true
			}
			var taken []netip.Prefix
			for _, s := range tt.taken {
				taken = append(taken, netip.MustParsePrefix(s))
			}
			got, err := p.Allocate(func(i int) bool { return used[i] }, taken)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if err == nil && got != tt.want {
				t.Fatalf("Allocate = %d, want %d", got, tt.want)
			}
		})
	}
}
