package erofs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
	"testing"
)

// dirCases are name sets whose directory layouts must read back: they are
// also the fuzz seeds.
var dirCases = []struct {
	name  string
	names []string
}{
	{"empty_directory", nil},
	{"sorts_before_dot", []string{"-x", "!", "#", "+", ",", "a"}},
	{"dots_as_prefixes", []string{"..a", ".a", "...", ".git"}},
	{"spaces_unicode_newlines", []string{"with space", "ünïcødé", "new\nline", "文件.txt"}},
	{"longest_names", []string{strings.Repeat("a", 255), strings.Repeat("b", 255), strings.Repeat("c", 254)}},
	{"many_blocks", manyNames(1000, 40)},
	{"block_exactly_full", manyNames(4096/(direntSize+20)+3, 20)},
}

func manyNames(n, length int) []string {
	out := make([]string, n)
	for i := range out {
		s := fmt.Sprintf("%06d", i)
		out[i] = s + strings.Repeat("x", max(0, length-len(s)))
	}
	return out
}

// dirNames is what a directory holds: the names given, "." and "..", in
// byte order.
func dirNames(names []string) []string {
	set := map[string]bool{".": true, "..": true}
	for _, n := range names {
		set[n] = true
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// encodeNames lays a directory out as Write does, nid i for the i-th name.
func encodeNames(names []string) ([]byte, int64) {
	ds := make([]dirent, len(names))
	for i, n := range names {
		ds[i] = dirent{name: n, nid: uint64(1000 + i), ftype: ftRegular}
	}
	starts, size := planDir(names)
	// Whole blocks, zero past the size: what the kernel's page of the
	// directory holds.
	out := make([]byte, (size+blockSize-1)/blockSize*blockSize)
	encodeDir(out, ds, starts)
	return out, size
}

// readDir decodes a directory the way the kernel's readdir does
// (fs/erofs/dir.c), failing where it would report corruption.
func readDir(data []byte, size int64) ([]string, []uint64, error) {
	var names []string
	var nids []uint64
	for pos := int64(0); pos < size; pos += blockSize {
		blk := data[pos : pos+blockSize]
		maxsize := int(min(size-pos, blockSize))
		nameoff0 := int(binary.LittleEndian.Uint16(blk[8:]))
		if nameoff0 < direntSize || nameoff0 >= blockSize {
			return nil, nil, fmt.Errorf("block at %d: first nameoff %d", pos, nameoff0)
		}
		n := nameoff0 / direntSize
		for i := 0; i < n; i++ {
			de := blk[i*direntSize:]
			off := int(binary.LittleEndian.Uint16(de[8:]))
			var l int
			if i+1 < n {
				l = int(binary.LittleEndian.Uint16(blk[(i+1)*direntSize+8:])) - off
			} else {
				l = bytes.IndexByte(blk[off:maxsize], 0)
				if l < 0 {
					l = maxsize - off
				}
			}
			if l <= 0 || off+l > maxsize || l > maxNameLen {
				return nil, nil, fmt.Errorf("block at %d: entry %d: name at %d of %d bytes", pos, i, off, l)
			}
			names = append(names, string(blk[off:off+l]))
			nids = append(nids, binary.LittleEndian.Uint64(de))
		}
	}
	return names, nids, nil
}

// lookup finds name the way the kernel's lookup does (fs/erofs/namei.c):
// a binary search over blocks by their first name, then within the block.
// A name's end is the next name's offset, or a NUL or the block's end.
func lookup(data []byte, size int64, name string) (uint64, bool) {
	nblocks := int((size + blockSize - 1) / blockSize)
	entry := func(blk []byte, i, n int) string {
		off := int(binary.LittleEndian.Uint16(blk[i*direntSize+8:]))
		end := blockSize
		if i+1 < n {
			end = int(binary.LittleEndian.Uint16(blk[(i+1)*direntSize+8:]))
		}
		s := blk[off:end]
		if z := bytes.IndexByte(s, 0); z >= 0 {
			s = s[:z]
		}
		return string(s)
	}
	head, back := 0, nblocks-1
	cand := -1
	for head <= back {
		mid := head + (back-head)/2
		blk := data[mid*blockSize : (mid+1)*blockSize]
		n := int(binary.LittleEndian.Uint16(blk[8:])) / direntSize
		switch first := entry(blk, 0, n); {
		case name == first:
			return binary.LittleEndian.Uint64(blk), true
		case name > first:
			cand = mid
			head = mid + 1
		default:
			back = mid - 1
		}
	}
	if cand < 0 {
		return 0, false
	}
	blk := data[cand*blockSize : (cand+1)*blockSize]
	n := int(binary.LittleEndian.Uint16(blk[8:])) / direntSize
	lo, hi := 0, n-1
	for lo <= hi {
		mid := lo + (hi-lo)/2
		switch e := entry(blk, mid, n); {
		case name == e:
			return binary.LittleEndian.Uint64(blk[mid*direntSize:]), true
		case name > e:
			lo = mid + 1
		default:
			hi = mid - 1
		}
	}
	return 0, false
}

func checkDir(t *testing.T, given []string) {
	t.Helper()
	want := dirNames(given)
	data, size := encodeNames(want)
	got, nids, err := readDir(data, size)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("names read back %q, want %q", got, want)
	}
	for i, n := range want {
		if nids[i] != uint64(1000+i) {
			t.Errorf("%q: nid %d, want %d", n, nids[i], 1000+i)
		}
		if nid, ok := lookup(data, size, n); !ok || nid != uint64(1000+i) {
			t.Errorf("lookup %q: nid %d found %v, want %d", n, nid, ok, 1000+i)
		}
	}
	for _, absent := range []string{"zzz-absent", "-", " ", "\x01"} {
		if !contains(want, absent) {
			if _, ok := lookup(data, size, absent); ok {
				t.Errorf("lookup of absent %q found something", absent)
			}
		}
	}
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func TestDirLayout(t *testing.T) {
	for _, tt := range dirCases {
		t.Run(tt.name, func(t *testing.T) { checkDir(t, tt.names) })
	}
}

// FuzzDirLayout: any set of valid names lays out into blocks that decode
// back to the same sorted names, each found by the kernel's lookup.
func FuzzDirLayout(f *testing.F) {
	for _, tt := range dirCases {
		f.Add(strings.Join(tt.names, "/"))
	}
	f.Fuzz(func(t *testing.T, joined string) {
		var names []string
		for _, n := range strings.Split(joined, "/") {
			if checkName(n) == nil {
				names = append(names, n)
			}
		}
		checkDir(t, names)
	})
}
