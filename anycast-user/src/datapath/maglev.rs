//! The shape of `MAGLEV`'s inner tables, and the outer map the controller creates itself.
//!
//! Why the controller creates it: the verifier inlines an array lookup (no helper call, a
//! bounds check and an address computation) only when it knows the array's size; for an
//! inner map that is the template's, and only if the template lacks `BPF_F_INNER_MAP`
//! (kernel/bpf/arraymap.c `array_map_gen_lookup` refuses inner maps of that flag;
//! kernel/bpf/map_in_map.c copies the template's `index_mask` and `elem_size` into the
//! inner meta). Then every inner map must have the template's `max_entries`
//! (`array_map_meta_equal`). aya 0.14 would create the template from the object's BTF, at
//! its compile-time size; the configured `maglev_table_size` needs another one, so the
//! controller creates the outer map with a template of that size and pins it where the
//! loader looks (`EbpfLoader::map_pin_path` reuses a pinned map as it is).

use std::{
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::Path,
};

use anycast_common::{
    maps::{self, BPF_F_INNER_MAP, MAX_VIPS, maglev_inner_len},
    site::{MAGLEV_CHECK, MAGLEV_LOCAL},
};
use aya::maps::{Array, IterableMap, MapData, MapError};

use super::sys;

/// linux/bpf.h `BPF_MAP_TYPE_ARRAY_OF_MAPS`.
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// How the inner tables of one `MAGLEV` outer map are made (what its template accepts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// This build's: every inner array has `entries` entries and no flag; a table of M
    /// slots fills entries 0..=M (M in entry 0), the rest stays zero.
    Fixed { entries: u32 },
    /// Older builds' (and their objects in a side-by-side benchmark): `BPF_F_INNER_MAP`,
    /// each inner array exactly M + 1 entries.
    Sized,
}

impl Shape {
    /// The shape for tables of `size` slots.
    pub const fn for_size(size: u32) -> Shape {
        Shape::Fixed { entries: maglev_inner_len(size) }
    }

    /// The most slots a table of this shape holds.
    pub const fn capacity(self) -> u32 {
        match self {
            Shape::Fixed { entries } => entries - 1,
            Shape::Sized => maps::MAGLEV_MAX_SIZE,
        }
    }

    /// (max_entries, flags) of the inner array for a table of `slots`.
    pub const fn inner(self, slots: u32) -> (u32, u32) {
        match self {
            Shape::Fixed { entries } => (entries, 0),
            Shape::Sized => (maglev_inner_len(slots), BPF_F_INNER_MAP as u32),
        }
    }

    /// The shape an object's `MAGLEV` template gives (None: no such map).
    pub fn of_object(object: &[u8]) -> Result<Option<Shape>, aya_obj::ParseError> {
        let obj = aya_obj::Object::parse(object)?;
        Ok(obj.maps.get(maps::MAGLEV).and_then(|m| m.inner()).map(|t| {
            if t.map_flags() & BPF_F_INNER_MAP as u32 != 0 {
                Shape::Sized
            } else {
                Shape::Fixed { entries: t.max_entries() }
            }
        }))
    }

    /// The shape of a pinned or loaded outer map, read off one of its inner maps (the
    /// kernel does not report the template itself), else off the name this build gives the
    /// outer maps it creates ([`create_pinned`]); None when it holds no table and has
    /// another name (an older build's).
    pub fn of_outer(outer_fd: BorrowedFd<'_>) -> Result<Option<Shape>, MapError> {
        for vip in 0..MAX_VIPS {
            let Ok(id) = sys::lookup_u32(outer_fd.as_raw_fd(), vip) else { continue };
            let inner = MapData::from_id(id)?;
            let info = inner.info()?;
            return Ok(Some(if info.map_flags() & BPF_F_INNER_MAP as u32 != 0 {
                Shape::Sized
            } else {
                Shape::Fixed { entries: info.max_entries() }
            }));
        }
        let fd = outer_fd
            .try_clone_to_owned()
            .map_err(|io_error| MapError::SyscallError(aya::sys::SyscallError { call: "dup", io_error }))?;
        let info = MapData::from_fd(fd)?.info()?;
        Ok(info.name_as_str().and_then(Shape::of_name))
    }

    /// The kernel name of an outer map of this shape: `MAGLEV_<entries>` (bpf_attr's 16
    /// bytes with the NUL: 262,148 entries at most take 13), so that the shape of an outer
    /// map that holds no table yet is known at the next start (else it is rebuilt, every
    /// link's program swapped, at each start of a controller with no VIP).
    fn name(self) -> [u8; 16] {
        let mut name = [0u8; 16];
        let text = match self {
            Shape::Fixed { entries } => format!("{}_{entries}", maps::MAGLEV),
            Shape::Sized => maps::MAGLEV.to_owned(),
        };
        name[..text.len()].copy_from_slice(text.as_bytes());
        name
    }

    fn of_name(name: &str) -> Option<Shape> {
        let entries = name.strip_prefix(maps::MAGLEV)?.strip_prefix('_')?.parse().ok()?;
        Some(Shape::Fixed { entries })
    }
}

/// `union bpf_attr` for BPF_MAP_CREATE, up to the name.
#[repr(C)]
struct CreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// Creates a `MAGLEV` outer map whose tables are `shape` (a [`Shape::Fixed`]) and pins it
/// at `path`.
pub fn create_pinned(path: &Path, shape: Shape) -> Result<(), MapError> {
    let (entries, flags) = shape.inner(shape.capacity());
    let template = Array::<MapData, u32>::create(entries, flags)?;
    let template_fd = IterableMap::<u32, u32>::map(&template).fd().as_fd().as_raw_fd();
    let map_name = shape.name();
    let mut attr = CreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
        key_size: 4,
        value_size: 4,
        max_entries: MAX_VIPS,
        map_flags: 0,
        inner_map_fd: template_fd as u32,
        numa_node: 0,
        map_name,
    };
    let fd = sys::bpf(sys::BPF_MAP_CREATE, &mut attr).map_err(|io_error| {
        MapError::SyscallError(aya::sys::SyscallError { call: "bpf_map_create", io_error })
    })?;
    // SAFETY: BPF_MAP_CREATE returned a new fd that nothing else owns.
    let outer = MapData::from_fd(unsafe { OwnedFd::from_raw_fd(fd as i32) })?;
    outer.pin(path).map_err(|error| MapError::PinError { name: Some(maps::MAGLEV.into()), error })?;
    Ok(())
}

/// The shape of the outer map pinned at `path` (None: it holds no table).
pub fn pinned_shape(path: &Path) -> Result<Option<Shape>, MapError> {
    let outer = MapData::from_pin(path)?;
    Shape::of_outer(outer.fd().as_fd())
}

/// A running table (its entries, without the size slot) as a table of `slots` slots, to
/// carry the running state onto rebuilt tables: the same entries when it has `slots`;
/// else re-slotted in proportion (slot j takes old slot ⌊j·M/slots⌋, so every site keeps
/// its share) with every local entry flagged `MAGLEV_CHECK`, since a flow of a local bucket
/// may have been anywhere before (docs/datapath.md §6).
pub fn resized(entries: &[u32], slots: u32) -> Vec<u32> {
    let m = entries.len() as u64;
    if m == u64::from(slots) || m == 0 {
        return entries.to_vec();
    }
    (0..u64::from(slots))
        .map(|j| entries[(j * m / u64::from(slots)) as usize])
        .map(|e| if e & MAGLEV_LOCAL != 0 { e | MAGLEV_CHECK } else { e })
        .collect()
}

#[cfg(test)]
mod tests {
    use anycast_common::site::{MAGLEV_CHECK, MAGLEV_LOCAL};

    use anycast_common::maps::{MAGLEV_MAX_SIZE, maglev_inner_len};

    use super::{Shape, resized};

    #[test]
    fn the_name_of_an_outer_map_gives_its_shape_back() {
        for entries in [2, 252, 65_538, maglev_inner_len(MAGLEV_MAX_SIZE)] {
            let shape = Shape::Fixed { entries };
            let name = shape.name();
            assert_eq!(name[15], 0, "{entries}: no room for the NUL");
            let text = std::str::from_utf8(&name).unwrap().trim_end_matches('\0');
            assert_eq!(Shape::of_name(text), Some(shape));
        }
        assert_eq!(Shape::of_name("MAGLEV"), None, "an older build's outer map");
        assert_eq!(Shape::of_name("MAGLEV_x"), None);
    }

    #[test]
    fn a_table_of_the_same_size_is_kept_as_it_is() {
        let t = [1, 2 | MAGLEV_LOCAL, 2 | MAGLEV_LOCAL | MAGLEV_CHECK, 3];
        assert_eq!(resized(&t, 4), t.to_vec());
    }

    #[test]
    fn another_size_keeps_each_sites_share_and_flags_every_local_entry() {
        // 1/4 site 1, 3/4 site 2 (local) in 4 slots → 12 slots: 3 and 9.
        let local = 2 | MAGLEV_LOCAL;
        let t = [1, local, local, local];
        let r = resized(&t, 12);
        assert_eq!(r.len(), 12);
        assert_eq!(r.iter().filter(|&&e| e == 1).count(), 3);
        assert_eq!(r.iter().filter(|&&e| e == local | MAGLEV_CHECK).count(), 9);
        // Shrinking: 12 → 4 gives the shares back.
        assert_eq!(resized(&r, 4), vec![1, local | MAGLEV_CHECK, local | MAGLEV_CHECK, local | MAGLEV_CHECK]);
    }
}
