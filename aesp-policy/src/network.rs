//! The CEL network extension: IP addresses and CIDR ranges (`isIP`, `ip(...)`, `cidr(...)`,
//! `.containsIP(...)`, ...), with the semantics of the official conformance cases, so that
//! policies written for other CEL platforms carry over unchanged.

use std::{
    any::Any,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use cel::{
    Env, ExecutionError,
    common::{
        types::{self, CelBool, CelInt, CelString, Type},
        value::{CowVal, StaticVal, Val},
    },
};

/// The CEL type `net.IP`.
pub(crate) static IP_TYPE: Type = Type::new_unspecified_type("net.IP");
/// The CEL type `net.CIDR`.
pub(crate) static CIDR_TYPE: Type = Type::new_unspecified_type("net.CIDR");

/// An IP address (`net.IP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ip(IpAddr);

/// A CIDR range (`net.CIDR`): an address and a prefix length, not masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

fn parse_ip(text: &str) -> Result<IpAddr, String> {
    if text.contains('%') {
        return Err("IP Address with zone value is not allowed".to_owned());
    }
    let addr: IpAddr =
        text.parse().map_err(|_| format!("IP Address '{text}' parse error during conversion from string"))?;
    if addr.is_ipv6() && text.contains('.') {
        return Err("IPv4-mapped IPv6 address is not allowed".to_owned());
    }
    Ok(addr)
}

/// The value of `function(text)`, for `ip` or `cidr` of a string that parses; a policy's
/// constant, computed once when it is compiled. `None` leaves the call to run (and fail) at
/// evaluation, as it would have.
pub(crate) fn constant(function: &str, text: &str) -> Option<Box<dyn Val + 'static>> {
    match function {
        "ip" => parse_ip(text).ok().map(|ip| Box::new(Ip(ip)) as Box<dyn Val>),
        "cidr" => parse_cidr(text).ok().map(|cidr| Box::new(cidr) as Box<dyn Val>),
        _ => None,
    }
}

fn parse_cidr(text: &str) -> Result<Cidr, String> {
    if text.contains('%') {
        return Err("CIDR with zone value is not allowed".to_owned());
    }
    let parse_error = || "network address parse error during conversion from string".to_owned();
    let (addr, prefix) = text.split_once('/').ok_or_else(parse_error)?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 3 {
        return Err(parse_error());
    }
    let addr: IpAddr = addr.parse().map_err(|_| parse_error())?;
    if addr.is_ipv6() && text.contains('.') {
        return Err("IPv4-mapped IPv6 address is not allowed".to_owned());
    }
    let prefix: u8 = prefix.parse().map_err(|_| parse_error())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(parse_error());
    }
    Ok(Cidr { addr, prefix })
}

/// The address as an IPv4 one if it is IPv4 or IPv4-mapped IPv6.
fn unmapped(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

fn to_bits(addr: IpAddr) -> (u128, u8) {
    match addr {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

fn mask(bits: u128, width: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let keep = u32::from(width.min(prefix));
    let host = u32::from(width) - keep;
    let all = if width == 128 { u128::MAX } else { (1u128 << width) - 1 };
    let ones = all.checked_shr(host).unwrap_or(0).checked_shl(host).unwrap_or(0);
    bits & ones
}

impl Cidr {
    fn masked(self) -> Self {
        let (bits, width) = to_bits(self.addr);
        let masked = mask(bits, width, self.prefix);
        let addr = match self.addr {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(masked).unwrap_or(0))),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(masked)),
        };
        Self { addr, prefix: self.prefix }
    }

    fn contains_ip(self, ip: IpAddr) -> bool {
        let (own, width) = to_bits(self.addr);
        let (other, other_width) = to_bits(ip);
        width == other_width && mask(own, width, self.prefix) == mask(other, width, self.prefix)
    }

    fn contains_cidr(self, other: Cidr) -> bool {
        other.prefix >= self.prefix && self.contains_ip(other.addr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Val for Ip {
    fn get_type(&self) -> &Type {
        &IP_TYPE
    }
    fn cel_type() -> &'static Type {
        &IP_TYPE
    }
    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<Ip>().is_some_and(|o| unmapped(o.0) == unmapped(self.0))
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(*self)
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for Ip {}

impl Val for Cidr {
    fn get_type(&self) -> &Type {
        &CIDR_TYPE
    }
    fn cel_type() -> &'static Type {
        &CIDR_TYPE
    }
    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<Cidr>().is_some_and(|o| o == self)
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(*self)
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for Cidr {}

type Args<'b, 'v> = Vec<CowVal<'b, 'v>>;
type Out<'b, 'v> = Result<CowVal<'b, 'v>, ExecutionError>;

fn arg<'a, 'b, 'v, T: StaticVal>(
    args: &'a Args<'b, 'v>,
    index: usize,
    function: &str,
) -> Result<&'a T, ExecutionError> {
    args.get(index)
        .and_then(|a| a.downcast_ref::<T>())
        .ok_or_else(|| ExecutionError::function_error(function, "unexpected argument"))
}

fn string_arg<'a>(args: &'a Args<'_, '_>, index: usize, function: &str) -> Result<&'a str, ExecutionError> {
    args.get(index)
        .and_then(|a| a.downcast_ref::<CelString>())
        .map(CelString::inner)
        .ok_or_else(|| ExecutionError::function_error(function, "unexpected argument"))
}

fn boolean<'b, 'v>(value: bool) -> Out<'b, 'v> {
    Ok(CowVal::Borrowed(if value { &CelBool::TRUE } else { &CelBool::FALSE }))
}

fn ip_of_string<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let text = string_arg(&args, 0, "ip")?;
    parse_ip(text).map(|ip| CowVal::owned(Ip(ip))).map_err(|e| ExecutionError::function_error("ip", e))
}

fn cidr_of_string<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let text = string_arg(&args, 0, "cidr")?;
    parse_cidr(text).map(CowVal::owned).map_err(|e| ExecutionError::function_error("cidr", e))
}

fn is_ip<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    boolean(parse_ip(string_arg(&args, 0, "isIP")?).is_ok())
}

fn is_cidr<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    boolean(parse_cidr(string_arg(&args, 0, "isCIDR")?).is_ok())
}

fn is_canonical<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let text = string_arg(&args, 0, "ip.isCanonical")?;
    let ip = parse_ip(text).map_err(|e| ExecutionError::function_error("ip.isCanonical", e))?;
    boolean(ip.to_string() == text)
}

fn ip_to_string<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let ip = arg::<Ip>(&args, 0, "string")?;
    Ok(CowVal::owned(CelString::from(ip.0.to_string())))
}

fn cidr_to_string<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let cidr = arg::<Cidr>(&args, 0, "string")?;
    Ok(CowVal::owned(CelString::from(cidr.to_string())))
}

fn family<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let ip = arg::<Ip>(&args, 0, "family")?;
    Ok(CowVal::owned(CelInt::from(if ip.0.is_ipv4() { 4 } else { 6 })))
}

fn is_unspecified<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    boolean(arg::<Ip>(&args, 0, "isUnspecified")?.0.is_unspecified())
}

fn is_loopback<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    boolean(arg::<Ip>(&args, 0, "isLoopback")?.0.is_loopback())
}

fn link_local_unicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments().first().is_some_and(|s| s & 0xffc0 == 0xfe80),
    }
}

fn link_local_multicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => matches!(v4.octets(), [224, 0, 0, _]),
        IpAddr::V6(v6) => v6.segments().first().is_some_and(|s| s & 0xff0f == 0xff02),
    }
}

fn is_global_unicast<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let addr = unmapped(arg::<Ip>(&args, 0, "isGlobalUnicast")?.0);
    let broadcast = addr == IpAddr::V4(Ipv4Addr::BROADCAST);
    boolean(
        !addr.is_unspecified()
            && !addr.is_loopback()
            && !addr.is_multicast()
            && !link_local_unicast(addr)
            && !broadcast,
    )
}

fn is_link_local_multicast<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    boolean(link_local_multicast(unmapped(arg::<Ip>(&args, 0, "isLinkLocalMulticast")?.0)))
}

fn is_link_local_unicast<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    boolean(link_local_unicast(unmapped(arg::<Ip>(&args, 0, "isLinkLocalUnicast")?.0)))
}

fn contains_ip<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let cidr = *arg::<Cidr>(&args, 0, "containsIP")?;
    // The argument is an `ip` or a string; checked without building an error for a string.
    let ip = match args.get(1).and_then(|a| a.downcast_ref::<Ip>()) {
        Some(ip) => ip.0,
        None => parse_ip(string_arg(&args, 1, "containsIP")?)
            .map_err(|e| ExecutionError::function_error("containsIP", e))?,
    };
    boolean(cidr.contains_ip(ip))
}

/// `cidr.containsIP(ip)` where the call succeeds: `cidr` a `net.CIDR` and `ip` a `net.IP` or a
/// string that parses as one (the two overloads of `containsIP`); `None` where it fails.
pub(crate) fn contains_ip_of(cidr: &dyn Val, ip: &dyn Val) -> Option<bool> {
    let cidr = cidr.downcast_ref::<Cidr>()?;
    let ip = match ip.downcast_ref::<Ip>() {
        Some(ip) => ip.0,
        None => parse_ip(ip.downcast_ref::<CelString>()?.inner()).ok()?,
    };
    Some(cidr.contains_ip(ip))
}

fn contains_cidr<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    let cidr = *arg::<Cidr>(&args, 0, "containsCIDR")?;
    let other = match args.get(1).and_then(|a| a.downcast_ref::<Cidr>()) {
        Some(other) => *other,
        None => parse_cidr(string_arg(&args, 1, "containsCIDR")?)
            .map_err(|e| ExecutionError::function_error("containsCIDR", e))?,
    };
    boolean(cidr.contains_cidr(other))
}

fn cidr_ip<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    Ok(CowVal::owned(Ip(arg::<Cidr>(&args, 0, "ip")?.addr)))
}

fn cidr_masked<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    Ok(CowVal::owned(arg::<Cidr>(&args, 0, "masked")?.masked()))
}

fn prefix_length<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    Ok(CowVal::owned(CelInt::from(i64::from(arg::<Cidr>(&args, 0, "prefixLength")?.prefix))))
}

/// Registers the network extension on `env`.
pub(crate) fn register(env: &mut Env) -> Result<(), cel::DeclarationError> {
    let ip = || IP_TYPE.to_owned();
    let cidr = || CIDR_TYPE.to_owned();
    let string = || types::STRING_TYPE;
    env.add_type(ip())?;
    env.add_type(cidr())?;
    env.add_overload("ip", "string_to_ip", vec![string()], ip_of_string)?;
    env.add_overload("cidr", "string_to_cidr", vec![string()], cidr_of_string)?;
    env.add_overload("isIP", "is_ip_string", vec![string()], is_ip)?;
    env.add_overload("isCIDR", "is_cidr_string", vec![string()], is_cidr)?;
    env.add_overload("ip.isCanonical", "ip_is_canonical_string", vec![string()], is_canonical)?;
    env.add_overload("string", "ip_to_string", vec![ip()], ip_to_string)?;
    env.add_overload("string", "cidr_to_string", vec![cidr()], cidr_to_string)?;
    env.add_member_overload("family", "ip_family", ip(), vec![], family)?;
    env.add_member_overload("isUnspecified", "ip_is_unspecified", ip(), vec![], is_unspecified)?;
    env.add_member_overload("isLoopback", "ip_is_loopback", ip(), vec![], is_loopback)?;
    env.add_member_overload("isGlobalUnicast", "ip_is_global_unicast", ip(), vec![], is_global_unicast)?;
    env.add_member_overload(
        "isLinkLocalMulticast",
        "ip_is_link_local_multicast",
        ip(),
        vec![],
        is_link_local_multicast,
    )?;
    env.add_member_overload(
        "isLinkLocalUnicast",
        "ip_is_link_local_unicast",
        ip(),
        vec![],
        is_link_local_unicast,
    )?;
    env.add_member_overload("containsIP", "cidr_contains_ip_ip", cidr(), vec![ip()], contains_ip)?;
    env.add_member_overload("containsIP", "cidr_contains_ip_string", cidr(), vec![string()], contains_ip)?;
    env.add_member_overload("containsCIDR", "cidr_contains_cidr_cidr", cidr(), vec![cidr()], contains_cidr)?;
    env.add_member_overload(
        "containsCIDR",
        "cidr_contains_cidr_string",
        cidr(),
        vec![string()],
        contains_cidr,
    )?;
    env.add_member_overload("ip", "cidr_ip", cidr(), vec![], cidr_ip)?;
    env.add_member_overload("masked", "cidr_masked", cidr(), vec![], cidr_masked)?;
    env.add_member_overload("prefixLength", "cidr_prefix_length", cidr(), vec![], prefix_length)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_follows_the_extension() {
        assert!(parse_ip("192.168.0.1").is_ok());
        assert!(parse_ip("192.168.0.1.0").is_err());
        assert!(parse_ip("fe80::1%en0").is_err());
        assert!(parse_ip("::ffff:192.168.0.1").is_err());
        assert!(parse_ip("::ffff:c0a8:1").is_ok());
        assert!(parse_cidr("192.168.0.0/").is_err());
        assert!(parse_cidr("192.168.0.0/33").is_err());
        assert!(parse_cidr("2001:db8::/129").is_err());
        assert!(parse_cidr("10.0.0.0/+8").is_err());
    }

    #[test]
    fn containment_and_masking() {
        let net = parse_cidr("192.168.0.0/24").unwrap();
        assert!(net.contains_ip(parse_ip("192.168.0.255").unwrap()));
        assert!(!net.contains_ip(parse_ip("192.168.1.0").unwrap()));
        assert!(!net.contains_ip(parse_ip("2001:db8::1").unwrap()));
        assert!(net.contains_cidr(parse_cidr("192.168.0.128/25").unwrap()));
        assert!(!net.contains_cidr(parse_cidr("192.168.0.0/23").unwrap()));
        assert_eq!(parse_cidr("192.168.0.1/24").unwrap().masked().to_string(), "192.168.0.0/24");
        assert!(parse_cidr("0.0.0.0/0").unwrap().contains_ip(parse_ip("8.8.8.8").unwrap()));
        assert!(parse_cidr("::/0").unwrap().contains_ip(parse_ip("2001:db8::1").unwrap()));
        assert_eq!(parse_cidr("2001:db8::1/32").unwrap().masked().to_string(), "2001:db8::/32");
    }
}
