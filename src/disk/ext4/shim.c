/*
 * A narrow C layer over e2fsprogs' libext2fs for src/ext4/ffi.rs.
 *
 * Why C: libext2fs exposes much of what we need as macros and inline
 * functions over large structs (ext2_filsys, ext2_inode_large, directory
 * entries with checksum tails). Replicating those layouts in Rust would be
 * fragile across e2fsprogs versions; the compiler reads them from the headers
 * here instead. Every function returns an errcode_t (0 on success) that
 * fp_strerror() turns into text. No function keeps state of its own.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <et/com_err.h>
#include <ext2fs/ext2_fs.h>
#include <ext2fs/ext2fs.h>

struct fp_info {
	uint64_t blocks_count;
	uint64_t free_blocks;
	uint64_t reserved_blocks;
	uint32_t inodes_count;
	uint32_t free_inodes;
	uint32_t block_size;
	uint32_t inode_size;
	uint32_t feature_compat;
	uint32_t feature_incompat;
	uint32_t feature_ro_compat;
	uint32_t state;
	uint32_t needs_recovery;
	uint32_t orphans_present;
	uint8_t uuid[16];
	char label[17];
};

struct fp_attr {
	uint32_t mode; /* full st_mode, type bits included */
	uint32_t uid;
	uint32_t gid;
	int64_t mtime;
	uint32_t mtime_nsec;
	int64_t now;
};

struct fp_stat {
	uint32_t mode;
	uint32_t uid;
	uint32_t gid;
	uint32_t links;
	uint32_t flags;
	uint64_t size;
};

long fp_free_inode(ext2_filsys fs, uint32_t ino);
long fp_add_links(ext2_filsys fs, uint32_t ino, int delta);

/* Whether err means the filesystem has no free block or inode left. */
int fp_is_full(long err)
{
	return err == EXT2_ET_BLOCK_ALLOC_FAIL || err == EXT2_ET_INODE_ALLOC_FAIL ||
	       err == ENOSPC;
}

int fp_is_not_found(long err)
{
	return err == EXT2_ET_FILE_NOT_FOUND;
}

const char *fp_strerror(long err)
{
	return error_message((errcode_t)err);
}

/* The time the shim and libext2fs stamp (fs->now, see fp_open). */
static time_t fs_now(ext2_filsys fs)
{
	return fs->now ? fs->now : time(NULL);
}

int64_t fp_now(ext2_filsys fs)
{
	return (int64_t)fs_now(fs);
}

int64_t fp_wtime(ext2_filsys fs)
{
	return (int64_t)fs->super->s_wtime;
}

/*
 * Opens the filesystem at `offset` of `path`. Written (rw), every time it
 * stamps (new inodes' change and creation times, the superblock's write
 * time) is `now` when not 0, else the superblock's own last write time, so
 * that the same input gives the same bytes whenever it is written.
 */
long fp_open(const char *path, uint64_t offset, int rw, int64_t now, ext2_filsys *out)
{
	char opts[64];
	int flags = EXT2_FLAG_64BITS;
	errcode_t err;

	initialize_ext2_error_table();
	snprintf(opts, sizeof(opts), "offset=%llu", (unsigned long long)offset);
	if (rw)
		flags |= EXT2_FLAG_RW;
	err = ext2fs_open2(path, opts, flags, 0, 0, unix_io_manager, out);
	if (err)
		return err;
	if (rw) {
		err = ext2fs_read_bitmaps(*out);
		if (err) {
			ext2fs_free(*out);
			*out = NULL;
			return err;
		}
		(*out)->now = now ? (time_t)now : (time_t)(*out)->super->s_wtime;
	}
	return err;
}

void fp_info(ext2_filsys fs, struct fp_info *info)
{
	struct ext2_super_block *sb = fs->super;

	memset(info, 0, sizeof(*info));
	info->blocks_count = ext2fs_blocks_count(sb);
	info->free_blocks = ext2fs_free_blocks_count(sb);
	info->reserved_blocks = ext2fs_r_blocks_count(sb);
	info->inodes_count = sb->s_inodes_count;
	info->free_inodes = sb->s_free_inodes_count;
	info->block_size = fs->blocksize;
	info->inode_size = EXT2_INODE_SIZE(sb);
	info->feature_compat = sb->s_feature_compat;
	info->feature_incompat = sb->s_feature_incompat;
	info->feature_ro_compat = sb->s_feature_ro_compat;
	info->state = sb->s_state;
	info->needs_recovery = ext2fs_has_feature_journal_needs_recovery(sb);
	info->orphans_present = ext2fs_has_feature_orphan_present(sb) ||
				sb->s_last_orphan != 0;
	memcpy(info->uuid, sb->s_uuid, 16);
	memcpy(info->label, sb->s_volume_name, 16);
	info->label[16] = 0;
}

/* Writes superblock, group descriptors and bitmaps, then frees fs. */
long fp_close(ext2_filsys fs)
{
	return ext2fs_close_free(&fs);
}

/* Frees fs without writing anything (read-only use). */
void fp_abandon(ext2_filsys fs)
{
	ext2fs_free(fs);
}

long fp_lookup(ext2_filsys fs, uint32_t dir, const char *name, int len,
	       uint32_t *ino)
{
	return ext2fs_lookup(fs, dir, name, len, NULL, ino);
}

long fp_stat(ext2_filsys fs, uint32_t ino, struct fp_stat *st)
{
	struct ext2_inode inode;
	errcode_t err = ext2fs_read_inode(fs, ino, &inode);

	if (err)
		return err;
	st->mode = inode.i_mode;
	st->uid = inode_uid(inode);
	st->gid = inode_gid(inode);
	st->links = inode.i_links_count;
	st->flags = inode.i_flags;
	st->size = EXT2_I_SIZE(&inode);
	return 0;
}

static void encode_time(int64_t secs, uint32_t nsec, __u32 *lo, __u32 *extra)
{
	*lo = (__u32)secs;
	*extra = (__u32)(((secs - (int32_t)secs) >> 32) & EXT4_EPOCH_MASK) |
		 (nsec << EXT4_EPOCH_BITS);
}

static void apply_attr(ext2_filsys fs, struct ext2_inode_large *inode,
		       const struct fp_attr *a)
{
	__u32 dummy;

	inode->i_mode = (inode->i_mode & LINUX_S_IFMT) | (a->mode & 07777);
	inode->i_uid = a->uid & 0xffff;
	ext2fs_set_i_uid_high(*inode, a->uid >> 16);
	inode->i_gid = a->gid & 0xffff;
	ext2fs_set_i_gid_high(*inode, a->gid >> 16);
	encode_time(a->mtime, a->mtime_nsec, &inode->i_mtime, &dummy);
	encode_time(a->now, 0, &inode->i_atime, &dummy);
	encode_time(a->now, 0, &inode->i_ctime, &dummy);
	if (EXT2_INODE_SIZE(fs->super) > EXT2_GOOD_OLD_INODE_SIZE &&
	    inode->i_extra_isize >= 24) {
		encode_time(a->mtime, a->mtime_nsec, &inode->i_mtime,
			    &inode->i_mtime_extra);
		encode_time(a->now, 0, &inode->i_atime, &inode->i_atime_extra);
		encode_time(a->now, 0, &inode->i_ctime, &inode->i_ctime_extra);
		if (inode->i_crtime == 0)
			encode_time(a->now, 0, &inode->i_crtime,
				    &inode->i_crtime_extra);
	}
}

static errcode_t read_large(ext2_filsys fs, uint32_t ino,
			    struct ext2_inode_large *inode)
{
	memset(inode, 0, sizeof(*inode));
	return ext2fs_read_inode_full(fs, ino, (struct ext2_inode *)inode,
				      sizeof(*inode));
}

static errcode_t write_large(ext2_filsys fs, uint32_t ino,
			     struct ext2_inode_large *inode)
{
	return ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)inode,
				       sizeof(*inode));
}

/* Sets permission bits, owner and times of an existing inode. */
long fp_set_attr(ext2_filsys fs, uint32_t ino, const struct fp_attr *a)
{
	struct ext2_inode_large inode;
	errcode_t err = read_large(fs, ino, &inode);

	if (err)
		return err;
	apply_attr(fs, &inode, a);
	return write_large(fs, ino, &inode);
}

/*
 * A new directory that is not yet linked anywhere; ".." points to parent
 * and the parent's link count is raised (ext2fs_mkdir with no name).
 */
long fp_mkdir(ext2_filsys fs, uint32_t parent, const struct fp_attr *a,
	      uint32_t *ino)
{
	errcode_t err;

	err = ext2fs_new_inode(fs, parent, LINUX_S_IFDIR | 0755, NULL, ino);
	if (err)
		return err;
	err = ext2fs_mkdir(fs, parent, *ino, NULL);
	if (err)
		return err;
	err = fp_set_attr(fs, *ino, a);
	if (err) {
		fp_free_inode(fs, *ino);
		fp_add_links(fs, parent, -1);
	}
	return err;
}

/* A new, unlinked symlink. */
long fp_symlink(ext2_filsys fs, uint32_t parent, const struct fp_attr *a,
		const char *target, uint32_t *ino)
{
	errcode_t err;

	err = ext2fs_new_inode(fs, parent, LINUX_S_IFLNK | 0777, NULL, ino);
	if (err)
		return err;
	err = ext2fs_symlink(fs, parent, *ino, NULL, target);
	if (err)
		return err;
	err = fp_set_attr(fs, *ino, a);
	if (err)
		fp_free_inode(fs, *ino);
	return err;
}

/*
 * A new, unlinked, empty inode of any other type: regular file (extent
 * mapped, no blocks yet), character or block device, FIFO, socket.
 */
long fp_create(ext2_filsys fs, uint32_t parent, const struct fp_attr *a,
	       uint32_t major, uint32_t minor, uint32_t *ino)
{
	struct ext2_inode_large inode;
	errcode_t err;

	err = ext2fs_new_inode(fs, parent, a->mode, NULL, ino);
	if (err)
		return err;
	memset(&inode, 0, sizeof(inode));
	inode.i_mode = a->mode;
	inode.i_links_count = 1;
	if (LINUX_S_ISREG(a->mode) && ext2fs_has_feature_extents(fs->super)) {
		ext2_extent_handle_t handle;

		/* Opening an extent handle on an empty inode writes a valid
		 * empty extent header into i_block (as mke2fs -d does). */
		err = ext2fs_extent_open2(fs, *ino, (struct ext2_inode *)&inode,
					  &handle);
		if (err)
			return err;
		ext2fs_extent_free(handle);
	} else if (LINUX_S_ISCHR(a->mode) || LINUX_S_ISBLK(a->mode)) {
		if (major < 256 && minor < 256) {
			inode.i_block[0] = major * 256 + minor;
			inode.i_block[1] = 0;
		} else {
			inode.i_block[0] = 0;
			inode.i_block[1] = (minor & 0xff) | (major << 8) |
					   ((minor & ~0xffU) << 12);
		}
	}
	err = ext2fs_write_new_inode(fs, *ino, (struct ext2_inode *)&inode);
	if (err)
		return err;
	ext2fs_inode_alloc_stats2(fs, *ino, +1, 0);
	err = fp_set_attr(fs, *ino, a);
	if (err)
		fp_free_inode(fs, *ino);
	return err;
}

/* Gives a new regular file its size and all its blocks, initialized. */
long fp_file_alloc(ext2_filsys fs, uint32_t ino, uint64_t size)
{
	struct ext2_inode_large inode;
	blk64_t nblocks = (size + fs->blocksize - 1) / fs->blocksize;
	errcode_t err = read_large(fs, ino, &inode);

	if (err)
		return err;
	err = ext2fs_inode_size_set(fs, (struct ext2_inode *)&inode, size);
	if (err)
		return err;
	err = write_large(fs, ino, &inode);
	if (err || nblocks == 0)
		return err;
	return ext2fs_fallocate(fs, EXT2_FALLOCATE_FORCE_INIT, ino, NULL, ~0ULL,
				0, nblocks);
}

/* The physical run that holds logical block lblk of ino: start and length. */
long fp_file_map(ext2_filsys fs, uint32_t ino, uint64_t lblk, uint64_t *pblk,
		 uint64_t *len)
{
	ext2_extent_handle_t handle;
	struct ext2fs_extent extent;
	errcode_t err;

	err = ext2fs_extent_open(fs, ino, &handle);
	if (err)
		return err;
	err = ext2fs_extent_goto(handle, lblk);
	if (!err)
		err = ext2fs_extent_get(handle, EXT2_EXTENT_CURRENT, &extent);
	ext2fs_extent_free(handle);
	if (err)
		return err;
	if (lblk < extent.e_lblk || lblk >= extent.e_lblk + extent.e_len)
		return EXT2_ET_EXTENT_NOT_FOUND;
	*pblk = extent.e_pblk + (lblk - extent.e_lblk);
	*len = extent.e_len - (lblk - extent.e_lblk);
	return 0;
}

/*
 * Writes whole blocks through the filesystem's own I/O channel, so that its
 * block cache never holds a stale copy of them (large writes bypass and
 * invalidate the cache, small ones go through it).
 */
long fp_write_blocks(ext2_filsys fs, uint64_t pblk, uint64_t count,
		     const void *buf)
{
	uint64_t done = 0;

	while (done < count) {
		uint64_t n = count - done;
		errcode_t err;

		if (n > (1U << 30) / fs->blocksize)
			n = (1U << 30) / fs->blocksize;
		err = io_channel_write_blk64(fs->io, pblk + done, (int)n,
					     (const char *)buf +
						     done * fs->blocksize);
		if (err)
			return err;
		done += n;
	}
	return 0;
}

/* Sets (adds or replaces) extended attributes of ino. */
long fp_set_xattrs(ext2_filsys fs, uint32_t ino, uint32_t n,
		   const char *const *names, const void *const *values,
		   const size_t *lens)
{
	struct ext2_xattr_handle *h;
	errcode_t err, err2;
	uint32_t i;

	err = ext2fs_xattrs_open(fs, ino, &h);
	if (err)
		return err;
	err = ext2fs_xattrs_read(h);
	for (i = 0; !err && i < n; i++)
		err = ext2fs_xattr_set(h, names[i], values[i], lens[i]);
	err2 = ext2fs_xattrs_close(&h);
	return err ? err : err2;
}

/* Raises or lowers the link count of ino by delta. */
long fp_add_links(ext2_filsys fs, uint32_t ino, int delta)
{
	struct ext2_inode_large inode;
	errcode_t err = read_large(fs, ino, &inode);

	if (err)
		return err;
	if (LINUX_S_ISDIR(inode.i_mode) && inode.i_links_count == 1)
		return 0; /* dir_nlink: 1 means "too many to count" */
	inode.i_links_count += delta;
	if (LINUX_S_ISDIR(inode.i_mode) && delta > 0 &&
	    inode.i_links_count >= EXT2_LINK_MAX &&
	    ext2fs_has_feature_dir_nlink(fs->super))
		inode.i_links_count = 1;
	inode.i_ctime = (__u32)fs_now(fs);
	return write_large(fs, ino, &inode);
}

/*
 * Frees an inode that has no directory entry left: its blocks, its xattr
 * block and the inode itself. Used when an entry is replaced and to undo a
 * half-created entry after a failure.
 */
long fp_free_inode(ext2_filsys fs, uint32_t ino)
{
	struct ext2_inode_large inode;
	int is_dir;
	errcode_t err = read_large(fs, ino, &inode);

	if (err)
		return err;
	is_dir = LINUX_S_ISDIR(inode.i_mode);
	if (ext2fs_inode_has_valid_blocks2(fs, (struct ext2_inode *)&inode)) {
		err = ext2fs_punch(fs, ino, (struct ext2_inode *)&inode, NULL,
				   0, ~0ULL);
		if (err)
			return err;
	}
	err = ext2fs_free_ext_attr(fs, ino, &inode);
	if (err)
		return err;
	/* ext2fs_punch and free_ext_attr update the inode in memory */
	inode.i_links_count = 0;
	inode.i_size = 0;
	inode.i_size_high = 0;
	inode.i_dtime = (__u32)fs_now(fs);
	err = write_large(fs, ino, &inode);
	if (err)
		return err;
	ext2fs_inode_alloc_stats2(fs, ino, -1, is_dir);
	return 0;
}

/* Lists a directory's entries (".", ".." excluded) through a callback. */
typedef int (*fp_dirent_cb)(void *ctx, const char *name, int len,
			    uint32_t ino);

struct list_ctx {
	fp_dirent_cb cb;
	void *ctx;
};

static int list_proc(struct ext2_dir_entry *dirent,
		     int offset EXT2FS_ATTR((unused)),
		     int blocksize EXT2FS_ATTR((unused)),
		     char *buf EXT2FS_ATTR((unused)), void *priv)
{
	struct list_ctx *lc = priv;
	int len = ext2fs_dirent_name_len(dirent);

	if (dirent->inode == 0)
		return 0;
	if ((len == 1 && dirent->name[0] == '.') ||
	    (len == 2 && dirent->name[0] == '.' && dirent->name[1] == '.'))
		return 0;
	return lc->cb(lc->ctx, dirent->name, len, dirent->inode) ? DIRENT_ABORT
								    : 0;
}

long fp_list_dir(ext2_filsys fs, uint32_t dir, fp_dirent_cb cb, void *ctx)
{
	struct list_ctx lc = { cb, ctx };

	return ext2fs_dir_iterate(fs, dir, 0, NULL, list_proc, &lc);
}

static int ftype_of(uint32_t mode)
{
	switch (mode & LINUX_S_IFMT) {
	case LINUX_S_IFREG:
		return EXT2_FT_REG_FILE;
	case LINUX_S_IFDIR:
		return EXT2_FT_DIR;
	case LINUX_S_IFCHR:
		return EXT2_FT_CHRDEV;
	case LINUX_S_IFBLK:
		return EXT2_FT_BLKDEV;
	case LINUX_S_IFIFO:
		return EXT2_FT_FIFO;
	case LINUX_S_IFSOCK:
		return EXT2_FT_SOCK;
	case LINUX_S_IFLNK:
		return EXT2_FT_SYMLINK;
	}
	return EXT2_FT_UNKNOWN;
}

/*
 * Tries to put the entry into the last block of a linear directory. Returns
 * 0 when done, EXT2_ET_DIR_NO_SPACE when that block is full.
 */
static errcode_t append_last_block(ext2_filsys fs, uint32_t dir,
				   struct ext2_inode *dinode, const char *name,
				   int len, uint32_t ino, int ftype, char *buf)
{
	blk64_t nblocks = EXT2_I_SIZE(dinode) / fs->blocksize;
	blk64_t pblk = 0;
	unsigned int limit = fs->blocksize, offset = 0;
	unsigned int need = EXT2_DIR_REC_LEN(len);
	errcode_t err;

	if (nblocks == 0)
		return EXT2_ET_DIR_NO_SPACE;
	err = ext2fs_bmap2(fs, dir, dinode, NULL, 0, nblocks - 1, NULL, &pblk);
	if (err)
		return err;
	if (pblk == 0)
		return EXT2_ET_DIR_NO_SPACE;
	err = ext2fs_read_dir_block4(fs, pblk, buf, 0, dir);
	if (err)
		return err;
	if (ext2fs_has_feature_metadata_csum(fs->super))
		limit -= sizeof(struct ext2_dir_entry_tail);
	while (offset < limit) {
		struct ext2_dir_entry *d = (struct ext2_dir_entry *)(buf + offset);
		unsigned int rec_len, used;

		err = ext2fs_get_rec_len(fs, d, &rec_len);
		if (err)
			return err;
		if (rec_len < 8 || offset + rec_len > limit)
			return EXT2_ET_DIR_CORRUPTED;
		used = d->inode ? EXT2_DIR_REC_LEN(ext2fs_dirent_name_len(d)) : 0;
		if (rec_len >= used + need) {
			struct ext2_dir_entry *n = d;

			if (used) {
				err = ext2fs_set_rec_len(fs, used, d);
				if (err)
					return err;
				n = (struct ext2_dir_entry *)(buf + offset + used);
			}
			err = ext2fs_set_rec_len(fs, rec_len - used, n);
			if (err)
				return err;
			n->inode = ino;
			ext2fs_dirent_set_name_len(n, len);
			ext2fs_dirent_set_file_type(
				n, ext2fs_has_feature_filetype(fs->super) ? ftype
									  : 0);
			memcpy(n->name, name, len);
			return ext2fs_write_dir_block4(fs, pblk, buf, 0, dir);
		}
		offset += rec_len;
	}
	return EXT2_ET_DIR_NO_SPACE;
}

/*
 * Adds the entry name -> ino to dir. The caller has made sure that name is
 * not in dir yet. Linear directories get the entry appended to their last
 * block (growing by a block when it is full): constant time per entry, where
 * ext2fs_link scans the whole directory. Hash-indexed directories go through
 * ext2fs_link, which keeps the index valid.
 */
long fp_link(ext2_filsys fs, uint32_t dir, const char *name, int len,
	     uint32_t ino, uint32_t mode)
{
	struct ext2_inode dinode;
	char *buf = NULL, cname[EXT2_NAME_LEN + 1];
	int ftype = ftype_of(mode);
	errcode_t err;

	if (len <= 0 || len > EXT2_NAME_LEN)
		return EXT2_ET_INVALID_ARGUMENT;
	err = ext2fs_read_inode(fs, dir, &dinode);
	if (err)
		return err;
	if (dinode.i_flags & (EXT2_INDEX_FL | EXT4_INLINE_DATA_FL)) {
		memcpy(cname, name, len);
		cname[len] = 0;
		err = ext2fs_link(fs, dir, cname, ino, ftype);
		if (err == EXT2_ET_DIR_NO_SPACE) {
			err = ext2fs_expand_dir(fs, dir);
			if (!err)
				err = ext2fs_link(fs, dir, cname, ino, ftype);
		}
		return err;
	}
	err = ext2fs_get_mem(fs->blocksize, &buf);
	if (err)
		return err;
	err = append_last_block(fs, dir, &dinode, name, len, ino, ftype, buf);
	if (err == EXT2_ET_DIR_NO_SPACE) {
		err = ext2fs_expand_dir(fs, dir);
		if (!err)
			err = ext2fs_read_inode(fs, dir, &dinode);
		if (!err)
			err = append_last_block(fs, dir, &dinode, name, len,
						ino, ftype, buf);
	}
	ext2fs_free_mem(&buf);
	return err;
}

long fp_unlink(ext2_filsys fs, uint32_t dir, const char *name, int len,
	       uint32_t ino)
{
	char cname[EXT2_NAME_LEN + 1];

	if (len <= 0 || len > EXT2_NAME_LEN)
		return EXT2_ET_INVALID_ARGUMENT;
	memcpy(cname, name, len);
	cname[len] = 0;
	return ext2fs_unlink(fs, dir, cname, ino, 0);
}

/* ---- Reading (src/ext4/read.rs): nothing below writes. ---- */

struct fp_inode {
	uint32_t mode;
	uint32_t uid;
	uint32_t gid;
	uint32_t links;
	uint32_t flags;
	uint32_t major;
	uint32_t minor;
	uint32_t fast_symlink;
	uint64_t size;
	int64_t mtime;
	uint32_t mtime_nsec;
};

/*
 * Everything lstat shows of an inode. Device numbers are decoded as the
 * kernel does (ext4_iget): the old 8:8 encoding in i_block[0] when it is
 * not zero, else the new 12:20 one in i_block[1].
 */
/* The inverse of encode_time: seconds since 1970 (with the epoch bits of
 * extra) and nanoseconds. */
static void decode_time(__u32 lo, __u32 extra, int has_extra, int64_t *secs,
			uint32_t *nsec)
{
	*secs = (int32_t)lo;
	*nsec = 0;
	if (has_extra) {
		*secs += (int64_t)(extra & EXT4_EPOCH_MASK) << 32;
		*nsec = extra >> EXT4_EPOCH_BITS;
	}
}

long fp_read_inode(ext2_filsys fs, uint32_t ino, struct fp_inode *st)
{
	struct ext2_inode_large large;
	struct ext2_inode inode;
	errcode_t err;

	if (ino == 0 || ino > fs->super->s_inodes_count)
		return EXT2_ET_BAD_INODE_NUM;
	err = read_large(fs, ino, &large);
	if (err)
		return err;
	memcpy(&inode, &large, sizeof(inode));
	memset(st, 0, sizeof(*st));
	decode_time(large.i_mtime, large.i_mtime_extra,
		    EXT2_INODE_SIZE(fs->super) > EXT2_GOOD_OLD_INODE_SIZE &&
			    large.i_extra_isize >= 24,
		    &st->mtime, &st->mtime_nsec);
	st->mode = inode.i_mode;
	st->uid = inode_uid(inode);
	st->gid = inode_gid(inode);
	st->links = inode.i_links_count;
	st->flags = inode.i_flags;
	st->size = EXT2_I_SIZE(&inode);
	if (LINUX_S_ISCHR(inode.i_mode) || LINUX_S_ISBLK(inode.i_mode)) {
		uint32_t old = inode.i_block[0];
		uint32_t new = inode.i_block[1];

		if (old) {
			st->major = (old >> 8) & 0xff;
			st->minor = old & 0xff;
		} else {
			st->major = (new & 0xfff00) >> 8;
			st->minor = (new & 0xff) | ((new >> 12) & 0xfff00);
		}
	}
	if (LINUX_S_ISLNK(inode.i_mode))
		st->fast_symlink = ext2fs_is_fast_symlink(&inode) &&
				   !(inode.i_flags & EXT4_INLINE_DATA_FL);
	return 0;
}

/* A symlink's target into buf (bufsize >= the block size); *len its length. */
long fp_read_link(ext2_filsys fs, uint32_t ino, char *buf, size_t bufsize,
		  size_t *len)
{
	struct ext2_inode inode;
	uint64_t size;
	blk64_t pblk = 0;
	char *block = NULL;
	errcode_t err;

	err = ext2fs_read_inode(fs, ino, &inode);
	if (err)
		return err;
	if (!LINUX_S_ISLNK(inode.i_mode))
		return EXT2_ET_INVALID_ARGUMENT;
	size = EXT2_I_SIZE(&inode);
	if (inode.i_flags & EXT4_INLINE_DATA_FL) {
		size_t n = 0;

		err = ext2fs_inline_data_size(fs, ino, &n);
		if (err)
			return err;
		if (n > bufsize)
			return EXT2_ET_INLINE_DATA_NO_SPACE;
		err = ext2fs_inline_data_get(fs, ino, &inode, buf, &n);
		if (err)
			return err;
		*len = n < size ? n : size;
		return 0;
	}
	if (ext2fs_is_fast_symlink(&inode)) {
		if (size >= sizeof(inode.i_block) || size > bufsize)
			return EXT2_ET_INODE_CORRUPTED;
		memcpy(buf, inode.i_block, size);
		*len = size;
		return 0;
	}
	if (size >= fs->blocksize || size > bufsize)
		return EXT2_ET_INODE_CORRUPTED;
	err = ext2fs_bmap2(fs, ino, &inode, NULL, 0, 0, NULL, &pblk);
	if (err)
		return err;
	if (pblk == 0 || pblk >= ext2fs_blocks_count(fs->super))
		return EXT2_ET_INODE_CORRUPTED;
	err = ext2fs_get_mem(fs->blocksize, &block);
	if (err)
		return err;
	err = io_channel_read_blk64(fs->io, pblk, 1, block);
	if (!err) {
		memcpy(buf, block, size);
		*len = size;
	}
	ext2fs_free_mem(&block);
	return err;
}

/* A run of a file's blocks: logical start, physical start (0 for none), length. */
struct fp_run {
	uint64_t lblk;
	uint64_t pblk;
	uint64_t len;
	uint32_t uninit;
};

/* Block-mapped (ext2/3) files: one bmap per block, coalesced into runs. */
static errcode_t runs_blockmap(ext2_filsys fs, uint32_t ino,
			       struct ext2_inode *inode, uint64_t from,
			       struct fp_run *runs, uint32_t max, uint32_t *n)
{
	uint64_t end = (EXT2_I_SIZE(inode) + fs->blocksize - 1) / fs->blocksize;
	uint64_t lblk;

	*n = 0;
	for (lblk = from; lblk < end; lblk++) {
		blk64_t pblk = 0;
		errcode_t err = ext2fs_bmap2(fs, ino, inode, NULL, 0, lblk,
					     NULL, &pblk);

		if (err)
			return err;
		if (pblk == 0)
			continue;
		if (*n > 0 && runs[*n - 1].lblk + runs[*n - 1].len == lblk &&
		    runs[*n - 1].pblk + runs[*n - 1].len == pblk) {
			runs[*n - 1].len++;
			continue;
		}
		if (*n == max)
			break;
		runs[*n].lblk = lblk;
		runs[*n].pblk = pblk;
		runs[*n].len = 1;
		runs[*n].uninit = 0;
		(*n)++;
	}
	return 0;
}

/*
 * Up to max runs of ino's mapped blocks, in logical order, starting with the
 * first one that ends after logical block `from`. Holes are the gaps between
 * runs. *n == 0: no mapped block at or after `from`.
 */
long fp_file_runs(ext2_filsys fs, uint32_t ino, uint64_t from,
		  struct fp_run *runs, uint32_t max, uint32_t *n)
{
	struct ext2_inode inode;
	ext2_extent_handle_t handle;
	struct ext2fs_extent e;
	errcode_t err;

	*n = 0;
	err = ext2fs_read_inode(fs, ino, &inode);
	if (err)
		return err;
	if (inode.i_flags & EXT4_INLINE_DATA_FL)
		return EXT2_ET_INLINE_DATA_CANT_ITERATE;
	if (!(inode.i_flags & EXT4_EXTENTS_FL))
		return runs_blockmap(fs, ino, &inode, from, runs, max, n);
	err = ext2fs_extent_open2(fs, ino, &inode, &handle);
	if (err)
		return err;
	/* goto leaves the handle on the extent holding `from`, or next to it */
	err = ext2fs_extent_goto(handle, from);
	if (err && err != EXT2_ET_EXTENT_NOT_FOUND)
		goto out;
	err = ext2fs_extent_get(handle, EXT2_EXTENT_CURRENT, &e);
	if (err == EXT2_ET_NO_CURRENT_NODE) {
		err = 0; /* no extent at all */
		goto out;
	}
	while (!err) {
		if (!(e.e_flags & EXT2_EXTENT_FLAGS_LEAF)) {
			/* left on an index node: go down to the leaves */
			err = ext2fs_extent_get(handle, EXT2_EXTENT_NEXT_LEAF,
						&e);
			continue;
		}
		if (e.e_len == 0) {
			err = EXT2_ET_EXTENT_INVALID_LENGTH;
			break;
		}
		if (e.e_lblk + e.e_len > from) {
			if (*n == max)
				break;
			runs[*n].lblk = e.e_lblk;
			runs[*n].pblk = e.e_pblk;
			runs[*n].len = e.e_len;
			runs[*n].uninit =
				!!(e.e_flags & EXT2_EXTENT_FLAGS_UNINIT);
			(*n)++;
		}
		err = ext2fs_extent_get(handle, EXT2_EXTENT_NEXT_LEAF, &e);
	}
	if (err == EXT2_ET_EXTENT_NO_NEXT)
		err = 0;
out:
	ext2fs_extent_free(handle);
	return err;
}

/* Reads count whole blocks from physical block pblk (straight from the file
 * for large runs: libext2fs' cache is bypassed above 4 blocks). */
long fp_read_blocks(ext2_filsys fs, uint64_t pblk, uint64_t count, void *buf)
{
	uint64_t done = 0;

	if (pblk + count < pblk || pblk + count > ext2fs_blocks_count(fs->super))
		return EXT2_ET_BAD_BLOCK_NUM;
	while (done < count) {
		uint64_t n = count - done;
		errcode_t err;

		if (n > (1U << 30) / fs->blocksize)
			n = (1U << 30) / fs->blocksize;
		err = io_channel_read_blk64(fs->io, pblk + done, (int)n,
					    (char *)buf + done * fs->blocksize);
		if (err)
			return err;
		done += n;
	}
	return 0;
}

/* The content of an inline-data file: *len its length (<= bufsize). */
long fp_read_inline(ext2_filsys fs, uint32_t ino, void *buf, size_t bufsize,
		    size_t *len)
{
	struct ext2_inode inode;
	size_t n = 0;
	errcode_t err;

	err = ext2fs_read_inode(fs, ino, &inode);
	if (err)
		return err;
	err = ext2fs_inline_data_size(fs, ino, &n);
	if (err)
		return err;
	if (n > bufsize)
		return EXT2_ET_INLINE_DATA_NO_SPACE;
	err = ext2fs_inline_data_get(fs, ino, &inode, buf, &n);
	if (!err)
		*len = n;
	return err;
}

/* Calls cb(ctx, name, value, len) for each extended attribute of ino. */
typedef int (*fp_xattr_cb)(void *ctx, const char *name, const void *value,
			   size_t len);

struct xattr_ctx {
	fp_xattr_cb cb;
	void *ctx;
};

static int xattr_proc(char *name, char *value, size_t value_len, void *data)
{
	struct xattr_ctx *xc = data;

	return xc->cb(xc->ctx, name, value, value_len) ? XATTR_ABORT : 0;
}

long fp_list_xattrs(ext2_filsys fs, uint32_t ino, fp_xattr_cb cb, void *ctx)
{
	struct ext2_xattr_handle *h;
	struct xattr_ctx xc = { cb, ctx };
	errcode_t err, err2;

	err = ext2fs_xattrs_open(fs, ino, &h);
	if (err)
		return err;
	err = ext2fs_xattrs_read(h);
	if (!err)
		err = ext2fs_xattrs_iterate(h, xattr_proc, &xc);
	err2 = ext2fs_xattrs_close(&h);
	return err ? err : err2;
}

/* Like fp_list_dir, with each entry's file type (EXT2_FT_*, 0 if unknown). */
typedef int (*fp_dirent_type_cb)(void *ctx, const char *name, int len,
				 uint32_t ino, int ftype);

struct read_dir_ctx {
	fp_dirent_type_cb cb;
	void *ctx;
	int filetype;
};

static int read_dir_proc(struct ext2_dir_entry *dirent,
			 int offset EXT2FS_ATTR((unused)),
			 int blocksize EXT2FS_ATTR((unused)),
			 char *buf EXT2FS_ATTR((unused)), void *priv)
{
	struct read_dir_ctx *rc = priv;
	int len = ext2fs_dirent_name_len(dirent);
	int ftype = rc->filetype ? ext2fs_dirent_file_type(dirent) : 0;

	if (dirent->inode == 0)
		return 0;
	if ((len == 1 && dirent->name[0] == '.') ||
	    (len == 2 && dirent->name[0] == '.' && dirent->name[1] == '.'))
		return 0;
	return rc->cb(rc->ctx, dirent->name, len, dirent->inode, ftype) ?
		       DIRENT_ABORT :
		       0;
}

long fp_read_dir(ext2_filsys fs, uint32_t dir, fp_dirent_type_cb cb, void *ctx)
{
	struct read_dir_ctx rc = { cb, ctx,
				   ext2fs_has_feature_filetype(fs->super) };

	return ext2fs_dir_iterate(fs, dir, 0, NULL, read_dir_proc, &rc);
}
