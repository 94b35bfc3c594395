use super::super::b::B;

pub fn make(b: B) -> B {
    let c = 'x';
    let _ = c;
    b
}
