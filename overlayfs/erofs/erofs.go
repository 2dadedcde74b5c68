// Package erofs writes EROFS images of a directory tree. A base snapshot
// made of plain files costs one inode per source path, and creating those
// inodes is most of a first env's time; an image is one file, which the
// kernel mounts read-only (EROFS can be backed by a regular file) and
// overlay stacks on. Where the filesystem can, file data is shared with the
// source by reflink (FICLONERANGE of each file's whole blocks into the
// image at a block-aligned offset), so the image's size on disk is its
// metadata and small files.
//
// Only the uncompressed layouts are written: FLAT_PLAIN and FLAT_INLINE
// (the last partial block of a file, directory or symlink kept right after
// its inode), with 64-byte extended inodes throughout so that each inode
// keeps its own mtime in nanoseconds and 32-bit owners. No extended
// attributes.
package erofs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// On-disk format constants (linux/fs/erofs/erofs_fs.h).
const (
	blockBits   = 12
	blockSize   = 1 << blockBits
	superOffset = 1024
	superSize   = 128
	superMagic  = 0xE0F5E1E2
	inodeSize   = 64 // struct erofs_inode_extended
	slotSize    = 32 // nids count 32-byte slots
	direntSize  = 12 // struct erofs_dirent
	maxNameLen  = 255

	layoutExtended = 1 // i_format bit 0
	flatPlain      = 0 // i_format bits 1-3: data in whole blocks
	flatInline     = 2 // i_format bits 1-3: whole blocks, then the tail after the inode

	// maxInline is the longest tail that fits in one block with its inode:
	// inline data must not cross a block boundary.
	maxInline = blockSize - inodeSize
)

// File types of directory entries (EROFS_FT_*, the kernel's FT_*).
const (
	ftRegular = 1
	ftDir     = 2
	ftSymlink = 7
)

// Mode type bits (S_IFMT and friends), spelt out so this file builds
// everywhere.
const (
	modeType    = 0o170000
	modeDir     = 0o040000
	modeRegular = 0o100000
	modeSymlink = 0o120000
)

// MagicNumber is the f_type statfs reports for a mounted EROFS.
const MagicNumber = superMagic

// ErrFormat is returned (wrapped) for a tree the format cannot hold.
var ErrFormat = errors.New("not representable in an erofs image")

// dirent is one name of a directory and the inode it names.
type dirent struct {
	name  string
	nid   uint64
	ftype uint8
}

// planDir splits the sorted names of a directory into blocks: each block
// holds its dirents and then their names, and no entry crosses a block.
// It returns the index of the first entry of each block and the
// directory's size: whole blocks, then the used part of the last one.
func planDir(names []string) (starts []int, size int64) {
	used := blockSize // forces a first block
	for i, n := range names {
		need := direntSize + len(n)
		if used+need > blockSize {
			if len(starts) > 0 {
				size += blockSize
			}
			starts = append(starts, i)
			used = 0
		}
		used += need
	}
	if len(starts) == 0 {
		return nil, 0
	}
	return starts, size + int64(used)
}

// encodeDir writes a directory's blocks, as planned by planDir, into out
// (size bytes; what follows the last name of a block stays zero, which
// ends that name for the kernel).
func encodeDir(out []byte, ds []dirent, starts []int) {
	for b, lo := range starts {
		hi := len(ds)
		if b+1 < len(starts) {
			hi = starts[b+1]
		}
		blk := out[b*blockSize:]
		nameoff := (hi - lo) * direntSize
		for i, d := range ds[lo:hi] {
			de := blk[i*direntSize:]
			binary.LittleEndian.PutUint64(de[0:], d.nid)
			binary.LittleEndian.PutUint16(de[8:], uint16(nameoff))
			de[10] = d.ftype
			de[11] = 0
			nameoff += copy(blk[nameoff:], d.name)
		}
	}
}

// checkName refuses names no directory can hold.
func checkName(name string) error {
	if name == "" || len(name) > maxNameLen || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("name %q: %w", name, ErrFormat)
	}
	return nil
}

// inodeHeader is the fields of an extended on-disk inode.
type inodeHeader struct {
	layout  uint16 // flatPlain or flatInline
	mode    uint32
	size    int64
	blkaddr uint32 // first data block (raw_blkaddr)
	ino     uint32
	uid     uint32
	gid     uint32
	mtime   int64
	nsec    uint32
	nlink   uint32
}

func (h *inodeHeader) encode(out []byte) {
	le := binary.LittleEndian
	le.PutUint16(out[0:], layoutExtended|h.layout<<1)
	le.PutUint16(out[2:], 0) // no xattrs
	le.PutUint16(out[4:], uint16(h.mode))
	le.PutUint16(out[6:], 0)
	le.PutUint64(out[8:], uint64(h.size))
	le.PutUint32(out[16:], h.blkaddr)
	le.PutUint32(out[20:], h.ino)
	le.PutUint32(out[24:], h.uid)
	le.PutUint32(out[28:], h.gid)
	le.PutUint64(out[32:], uint64(h.mtime))
	le.PutUint32(out[40:], h.nsec)
	le.PutUint32(out[44:], h.nlink)
	clear(out[48:64])
}

// superBlock is the fields of the on-disk super block this package sets.
type superBlock struct {
	rootNid     uint16
	metaBlkaddr uint32 // where nids count from: the first block of metadata
	inodes      uint64
	buildTime   int64
	buildNsec   uint32
	blocks      uint32
	uuid        [16]byte
}

func (s *superBlock) encode(out []byte) {
	le := binary.LittleEndian
	clear(out[:superSize])
	le.PutUint32(out[0:], superMagic)
	// checksum (4) and feature_compat (8) stay zero: no checksum.
	out[12] = blockBits
	le.PutUint16(out[14:], s.rootNid)
	le.PutUint64(out[16:], s.inodes)
	le.PutUint64(out[24:], uint64(s.buildTime))
	le.PutUint32(out[32:], s.buildNsec)
	le.PutUint32(out[36:], s.blocks)
	le.PutUint32(out[40:], s.metaBlkaddr)
	// xattr_blkaddr (44) unused.
	copy(out[48:64], s.uuid[:])
	// volume name, feature_incompat and the rest stay zero.
}
